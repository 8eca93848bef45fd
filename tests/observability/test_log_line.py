"""log_line, the fast path: it writes what a log record would, honours levels, filters and
logging.disable, cuts tracebacks, and never raises."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from typing import Any

import pytest

from keyvault.observability.logs import (
    JsonFormatter,
    current_request_id,
    log_line,
)
from tests.observability.log_support import (
    CANARY,
    logger_writing_to,
)


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
    logger = logger_writing_to(stream, name)
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
