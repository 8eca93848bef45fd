"""LineHandler: lines of one event-loop turn go out together in whole-line writes of at most
PIPE_BUF bytes, and none is kept past a flush, the end of a loop or a line outside one."""

from __future__ import annotations

import asyncio
import select

import pytest

from keyvault.observability.logs import (
    LineHandler,
)
from tests.observability.log_support import (
    RecordingStream,
    logger_writing_to,
)


async def test_lines_of_one_loop_turn_go_out_in_one_write() -> None:
    stream = RecordingStream()
    logger = logger_writing_to(stream, "keyvault.tests.line_handler.loop")
    logger.info("first")
    logger.info("second")
    assert stream.getvalue() == ""
    await asyncio.sleep(0)
    assert stream.flushed == ["first\nsecond\n"]


async def test_lines_logged_soon_after_a_write_wait_for_the_interval_and_go_out_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Long enough that a slow machine cannot let it pass between two statements.
    monkeypatch.setattr(LineHandler, "WRITE_INTERVAL_SECONDS", 0.2)
    stream = RecordingStream()
    logger = logger_writing_to(stream, "keyvault.tests.line_handler.paced")
    logger.info("first")
    await asyncio.sleep(0)
    logger.info("second")
    await asyncio.sleep(0)
    logger.info("third")
    await asyncio.sleep(0)
    assert stream.flushed == ["first\n"]
    await asyncio.sleep(0.4)
    assert stream.flushed == ["first\n", "second\nthird\n"]


async def test_each_write_holds_whole_lines_and_at_most_pipe_buf_bytes() -> None:
    stream = RecordingStream()
    logger = logger_writing_to(stream, "keyvault.tests.line_handler.chunks")
    lines = [f"{n:04d}" + "x" * 295 for n in range(40)] + ["y" * 5000, "z"]
    for line in lines:
        logger.info(line)
    await asyncio.sleep(0)
    assert "".join(stream.flushed) == "".join(line + "\n" for line in lines)
    for written in stream.flushed:
        assert written.endswith("\n")
        assert len(written.encode()) <= select.PIPE_BUF or written.count("\n") == 1
    assert len(stream.flushed) < len(lines)


async def test_a_flush_writes_what_is_kept_at_once() -> None:
    stream = RecordingStream()
    logger = logger_writing_to(stream, "keyvault.tests.line_handler.exit")
    logger.info("last words")
    for handler in logger.handlers:
        handler.flush()  # what logging.shutdown does at exit
    assert stream.getvalue() == "last words\n"


def test_outside_a_loop_every_line_is_written_at_once() -> None:
    stream = RecordingStream()
    logger = logger_writing_to(stream, "keyvault.tests.line_handler.plain")
    logger.info("first")
    logger.info("second")
    assert stream.flushed == ["first\n", "second\n"]


@pytest.mark.parametrize("next_line_in_a_loop", [True, False], ids=["next-loop", "no-loop"])
def test_lines_kept_when_a_loop_ends_go_out_before_the_next_line(
    monkeypatch: pytest.MonkeyPatch, next_line_in_a_loop: bool
) -> None:
    monkeypatch.setattr(LineHandler, "WRITE_INTERVAL_SECONDS", 0.2)
    stream = RecordingStream()
    logger = logger_writing_to(stream, "keyvault.tests.line_handler.loops")

    async def first_loop() -> None:
        logger.info("first")
        await asyncio.sleep(0)
        logger.info("second")  # its write is due after the loop has ended

    async def next_loop() -> None:
        logger.info("third")
        await asyncio.sleep(0.4)

    asyncio.run(first_loop())
    assert stream.flushed == ["first\n"]
    if next_line_in_a_loop:
        asyncio.run(next_loop())
    else:
        logger.info("third")  # written at once, but after what the ended loop kept
    assert "".join(stream.flushed) == "first\nsecond\nthird\n"
