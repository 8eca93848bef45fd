from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import select
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keyvault.observability.logs import (
    JsonFormatter,
    LineHandler,
    current_request_id,
    log_line,
    logging_config,
)

CANARY = "sk-log-canary-0123456789abcdef"


def formatted(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def make_record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("keyvault", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_a_line_is_one_json_object_with_time_level_logger_and_message() -> None:
    line = formatted(make_record("hello %s", "world"))

    assert line["message"] == "hello world"
    assert line["level"] == "WARNING"
    assert line["logger"] == "keyvault"
    assert line["time"].endswith("+00:00")
    assert "request_id" not in line


def test_the_current_request_id_is_on_every_line() -> None:
    token = current_request_id.set("req-1234")
    try:
        line = formatted(make_record())
    finally:
        current_request_id.reset(token)

    assert line["request_id"] == "req-1234"


def test_a_request_id_passed_as_extra_wins_over_the_current_one() -> None:
    token = current_request_id.set("req-of-the-task")
    try:
        named = formatted(make_record(request_id="req-described"))
        none = formatted(make_record(request_id=None))
    finally:
        current_request_id.reset(token)

    assert named["request_id"] == "req-described"
    assert "request_id" not in none


def test_extra_fields_are_top_level_and_an_audit_event_stays_nested() -> None:
    audit = {"action": "api_key.read", "target": "alice", "outcome": "ok"}

    line = formatted(make_record("audit", event="audit", audit=audit))

    assert line["event"] == "audit"
    assert line["audit"] == audit


def test_uvicorns_coloured_copy_of_the_message_is_dropped() -> None:
    line = formatted(make_record("Started", color_message="\x1b[32mStarted\x1b[0m"))

    assert "color_message" not in line


def test_an_exception_shows_its_type_and_frames_but_never_its_message() -> None:
    try:
        raise ValueError(f"could not parse {CANARY}")
    except ValueError:
        record = logging.LogRecord(
            "keyvault", logging.ERROR, __file__, 1, "failed", None, exc_info=sys.exc_info()
        )

    line = formatted(record)

    assert line["exc_type"] == "ValueError"
    assert any("test_logs.py" in frame for frame in line["exc_frames"])
    assert CANARY not in json.dumps(line)


def test_a_traceback_inside_the_message_is_cut_to_the_exception_name() -> None:
    message = (
        "Exception in 'lifespan' protocol\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        f"RuntimeError: key was {CANARY}\n"
    )

    line = formatted(make_record(message))

    assert line["message"] == "Exception in 'lifespan' protocol"
    assert line["exc_type"] == "RuntimeError"
    assert CANARY not in json.dumps(line)


@pytest.fixture
def configured() -> Iterator[Callable[[str], None]]:
    """Applies `logging_config(level)` for one test, and puts the previous logging back after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    names = ("keyvault", "uvicorn", "uvicorn.error", "uvicorn.access", "aiosqlite")
    levels = {name: logging.getLogger(name).level for name in names}

    def apply(level: str) -> None:
        logging.config.dictConfig(logging_config(level))

    yield apply
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    for name, previous in levels.items():
        logging.getLogger(name).setLevel(previous)


def written(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(text) for text in capsys.readouterr().out.splitlines()]


def test_uvicorn_lines_go_through_json_and_its_access_log_is_silenced(
    configured: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    configured("INFO")

    logging.getLogger("uvicorn.error").info("Started server process [1]")
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /users/alice/api-key" 200')

    lines = written(capsys)
    assert [line["message"] for line in lines] == ["Started server process [1]"]
    assert lines[0]["logger"] == "uvicorn.error"


def test_debug_level_opens_keyvaults_debug_lines_but_not_the_libraries(
    configured: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    configured("DEBUG")

    logging.getLogger("keyvault.access").debug("GET /healthz 200")
    logging.getLogger("aiosqlite").debug("executing INSERT ... ['alice', b'sealed']")
    logging.getLogger("aiosqlite").warning("a library warning")

    assert [line["message"] for line in written(capsys)] == [
        "GET /healthz 200",
        "a library warning",
    ]


class _RecordingStream(io.StringIO):
    """Keeps what each flush sent on: one flush of a real stream is one write system call."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []
        self._since_flush = 0

    def flush(self) -> None:
        text = self.getvalue()
        self.flushed.append(text[self._since_flush :])
        self._since_flush = len(text)
        super().flush()


def _logger_writing_to(stream: io.StringIO, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers = [LineHandler(stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


async def test_lines_of_one_loop_turn_go_out_in_one_write() -> None:
    stream = _RecordingStream()
    logger = _logger_writing_to(stream, "keyvault.tests.line_handler.loop")
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
    stream = _RecordingStream()
    logger = _logger_writing_to(stream, "keyvault.tests.line_handler.paced")
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
    stream = _RecordingStream()
    logger = _logger_writing_to(stream, "keyvault.tests.line_handler.chunks")
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
    stream = _RecordingStream()
    logger = _logger_writing_to(stream, "keyvault.tests.line_handler.exit")
    logger.info("last words")
    for handler in logger.handlers:
        handler.flush()  # what logging.shutdown does at exit
    assert stream.getvalue() == "last words\n"


def test_outside_a_loop_every_line_is_written_at_once() -> None:
    stream = _RecordingStream()
    logger = _logger_writing_to(stream, "keyvault.tests.line_handler.plain")
    logger.info("first")
    logger.info("second")
    assert stream.flushed == ["first\n", "second\n"]


@pytest.mark.parametrize("next_line_in_a_loop", [True, False], ids=["next-loop", "no-loop"])
def test_lines_kept_when_a_loop_ends_go_out_before_the_next_line(
    monkeypatch: pytest.MonkeyPatch, next_line_in_a_loop: bool
) -> None:
    monkeypatch.setattr(LineHandler, "WRITE_INTERVAL_SECONDS", 0.2)
    stream = _RecordingStream()
    logger = _logger_writing_to(stream, "keyvault.tests.line_handler.loops")

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


def _both_ways(
    name: str, extras: dict[str, Any], message: str, *args: object
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The line log_line writes and the one logger.log writes for the same call, times aside."""
    stream = io.StringIO()
    logger = _json_logger_writing_to(stream, name)
    log_line(logger, logging.INFO, dict(extras), message, *args)
    logger.log(logging.INFO, message, *args, extra=dict(extras))
    direct, through_record = (json.loads(text) for text in stream.getvalue().splitlines())
    for line in (direct, through_record):
        assert line.pop("time").endswith("+00:00")
    return direct, through_record


def test_log_line_writes_what_a_log_record_would() -> None:
    extras = {"event": "request", "status": 200, "audit": {"seq": 7, "actor": None}}
    token = current_request_id.set("req-current")
    try:
        direct, through_record = _both_ways(
            "keyvault.tests.log_line.same", extras, "GET %s %d", "/x", 200
        )
    finally:
        current_request_id.reset(token)

    assert direct == through_record
    assert direct["message"] == "GET /x 200"
    assert direct["request_id"] == "req-current"
    assert direct["audit"] == {"seq": 7, "actor": None}


def test_log_line_takes_a_request_id_from_its_extras_and_omits_a_missing_one() -> None:
    named = _both_ways(
        "keyvault.tests.log_line.named",
        {"request_id": "req-described"},
        "audit",
    )
    missing = _both_ways(
        "keyvault.tests.log_line.missing",
        {"request_id": None},
        "audit",
    )

    assert named[0] == named[1]
    assert named[0]["request_id"] == "req-described"
    assert missing[0] == missing[1]
    assert "request_id" not in missing[0]


def test_log_line_goes_through_a_log_record_when_anything_else_would_see_the_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = io.StringIO()
    logger = _json_logger_writing_to(stream, "keyvault.tests.log_line.captured")
    logger.propagate = True  # caplog's handler sits on the root logger
    with caplog.at_level(logging.INFO, logger=logger.name):
        log_line(logger, logging.INFO, {"event": "request"}, "seen by %s", "both")

    assert [record.getMessage() for record in caplog.records] == ["seen by both"]
    assert caplog.records[0].event == "request"  # type: ignore[attr-defined]
    assert json.loads(stream.getvalue())["message"] == "seen by both"


def test_log_line_honours_levels_filters_and_disabled_loggers() -> None:
    stream = io.StringIO()
    logger = _json_logger_writing_to(stream, "keyvault.tests.log_line.quiet")
    log_line(logger, logging.DEBUG, {}, "below the logger's level")
    logger.handlers[0].setLevel(logging.WARNING)
    log_line(logger, logging.INFO, {}, "below the handler's level")
    logger.handlers[0].setLevel(logging.NOTSET)
    logger.addFilter(lambda record: "secret" not in record.getMessage())
    log_line(logger, logging.INFO, {}, "a secret line")
    logger.filters.clear()
    logger.disabled = True
    log_line(logger, logging.INFO, {}, "from a disabled logger")

    assert stream.getvalue() == ""


def _json_logger_writing_to(stream: io.StringIO, name: str) -> logging.Logger:
    logger = _logger_writing_to(stream, name)
    logger.handlers[0].setFormatter(JsonFormatter())
    return logger


def test_log_line_makes_no_log_record_where_its_handler_is_the_only_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    logger = _json_logger_writing_to(stream, "keyvault.tests.log_line.direct")

    def no_record(*args: object, **kwargs: object) -> logging.LogRecord:
        raise AssertionError("log_line made a LogRecord")

    monkeypatch.setattr(logger, "makeRecord", no_record)
    log_line(logger, logging.INFO, {"event": "request"}, "direct")

    assert json.loads(stream.getvalue())["event"] == "request"


def test_log_line_cuts_a_traceback_in_its_message_as_a_record_line_does() -> None:
    message = f"failed\nTraceback (most recent call last):\nRuntimeError: key was {CANARY}\n"

    direct, through_record = _both_ways("keyvault.tests.log_line.trace", {}, message)

    assert direct == through_record
    assert direct["exc_type"] == "RuntimeError"
    assert CANARY not in json.dumps(direct)


def test_log_line_never_raises_on_a_line_it_cannot_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = io.StringIO()
    logger = _json_logger_writing_to(stream, "keyvault.tests.log_line.unformattable")

    log_line(logger, logging.INFO, {}, "%d requests", "not a number")

    assert stream.getvalue() == ""
    assert "Logging error" in capsys.readouterr().err


def test_log_line_with_no_handler_at_all_falls_back_to_logging(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = logging.getLogger("keyvault.tests.log_line.nowhere")
    logger.propagate = False
    logger.setLevel(logging.INFO)

    log_line(logger, logging.WARNING, {}, "to the last resort")

    assert "to the last resort" in capsys.readouterr().err


def test_log_line_honours_logging_disable() -> None:
    stream = io.StringIO()
    logger = _json_logger_writing_to(stream, "keyvault.tests.log_line.disabled_globally")
    logging.disable(logging.INFO)
    try:
        log_line(logger, logging.INFO, {}, "switched off")
    finally:
        logging.disable(logging.NOTSET)

    assert stream.getvalue() == ""
