"""The JSON log lines: what a formatted record holds and hides, and how logging_config routes
uvicorn's and the libraries' lines at each level."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keyvault.observability.logs import (
    current_request_id,
    logging_config,
)
from tests.observability.log_support import (
    CANARY,
    formatted,
    make_record,
)


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
