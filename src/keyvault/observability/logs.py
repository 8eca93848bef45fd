"""Logs as one JSON object per line on stdout, for every process `keyvault serve` starts.

Each line has `time`, `level`, `logger`, `message`, the `request_id` of the request it belongs to,
and whatever the caller passed as `extra` (`event`, `route`, `status`, …; an audit event's dict
stays nested under `audit`). An exception shows only its type and where it was raised: exception
messages can quote the values that caused them, and those may be keys or tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import select
import time
import traceback
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final

# The id of the request being served (set by keyvault.web.middleware.RequestId), on every line.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)

# The attributes every LogRecord has; anything else on a record came in through `extra`.
_RECORD_ATTRIBUTES: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# Not copied from a record as extras: what every LogRecord has, what uvicorn repeats with terminal
# colours, and the request id (placed by JsonFormatter.format itself).
_NOT_EXTRAS: Final = _RECORD_ATTRIBUTES | {"color_message", "request_id"}
_MAX_FRAMES: Final = 20
_TRACEBACK_MARK: Final = "Traceback (most recent call last):"
_NAME: Final = re.compile(r"[A-Za-z_][\w.]*")


# json.dumps(..., default=str) would build an encoder for every line.
_ENCODER: Final = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # Every request logs a line or two, mostly within the same second: its text is kept.
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        # A request_id passed in `extra` wins: an audit event is logged by whichever request's task
        # stored its batch, and names the request it describes.
        request_id = record.__dict__.get("request_id", current_request_id.get())
        extras = {name: value for name, value in record.__dict__.items() if name not in _NOT_EXTRAS}
        error = record.exc_info[1] if record.exc_info else None
        return self.line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            request_id,
            extras,
            error,
        )

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        request_id: str | None,
        extras: dict[str, Any],
        error: BaseException | None = None,
    ) -> str:
        """The JSON text of one line. `extras` cannot replace the fields named before them (a
        `request_id` among them is ignored: it is the argument's); `error` adds its type and
        frames."""
        line: dict[str, Any] = {
            "time": self._time(created),
            "level": level,
            "logger": logger,
            "message": message,
        }
        if _TRACEBACK_MARK in message:
            line["message"], line["exc_type"] = _without_traceback(message)
        if request_id is not None:
            line["request_id"] = request_id
        for name, value in extras.items():
            if name != "request_id":
                line.setdefault(name, value)
        if error is not None:
            line["exc_type"] = type(error).__name__
            line["exc_frames"] = _frames(error)
        return _ENCODER.encode(line)

    def _time(self, created: float) -> str:
        """`created` as ISO 8601 in UTC to the millisecond (…T05:27:23.794+00:00), the millisecond
        as LogRecord.msecs has it. Called under the handler's lock, like all of format."""
        second = int(created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"


def log_line(
    logger: logging.Logger, level: int, extras: dict[str, Any], message: str, *args: object
) -> None:
    """`logger.log(level, message, *args, extra=extras)`, in fewer steps where `keyvault serve`'s
    logging is in place: a line whose one destination is a LineHandler with a JsonFormatter (no
    filters on the way) is formatted straight from its fields, without a LogRecord; the text is the
    same. Two lines of every request go this way. As with `extra`, no name in
    `extras` may be a LogRecord attribute's, and a `request_id` among them wins over the current
    request's."""
    if logger.disabled or not logger.isEnabledFor(level):
        return
    handler = _sole_line_handler(logger, level)
    formatter = handler.formatter if handler is not None else None
    if handler is None or type(formatter) is not JsonFormatter:
        logger.log(level, message, *args, extra=extras)
        return
    request_id = extras["request_id"] if "request_id" in extras else current_request_id.get()
    handler.emit_fields(formatter, level, logger.name, request_id, extras, message, args)


def _sole_line_handler(logger: logging.Logger, level: int) -> LineHandler | None:
    """The one handler a `level` record of `logger` would reach, if it is an unfiltered LineHandler
    and no logger on the way filters; None otherwise (as Logger.callHandlers walks them)."""
    found = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if level < handler.level:
                continue
            if found is not None or type(handler) is not LineHandler or handler.filters:
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


def _without_traceback(message: str) -> tuple[str, str]:
    """Some libraries (Starlette's lifespan, for one) put a formatted traceback in the message
    itself; its last line quotes the exception's message, so only the exception's name is kept."""
    head, _, trace = message.partition(_TRACEBACK_MARK)
    last = next((text for text in reversed(trace.splitlines()) if text.strip()), "")
    name = last.split(":", 1)[0].strip()
    return head.rstrip() or "traceback omitted", name if _NAME.fullmatch(name) else "unknown"


def _frames(error: BaseException) -> list[str]:
    """`file:line in function` for each frame: enough to find the code, and holds no values."""
    frames = traceback.extract_tb(error.__traceback__)[-_MAX_FRAMES:]
    return [f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in frames]


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that, inside a running event loop, writes at most once per 10 milliseconds.

    Lines logged inside a loop are kept and written when the loop has run what it had ready, or,
    within WRITE_INTERVAL_SECONDS of the last write, once that interval is over: one system call
    for many lines, two lines per request under load. Each write holds whole
    lines and at most PIPE_BUF bytes (unless one line is longer), so on a pipe shared by several
    workers it is atomic and lines never interleave, as with one write per line. Outside a loop
    (the CLI, start-up, exit, other threads) each line is written at once, as StreamHandler does.
    """

    # Not shorter: each timer wakes the loop for one more turn, which a read pays for in CPU.
    WRITE_INTERVAL_SECONDS: Final = 0.01

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._last_write = float("-inf")
        # The loop a write of _pending is scheduled in: a loop that ends first drops its timer,
        # and the next loop to log must schedule the write again.
        self._scheduled_in: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._write_or_keep(line)

    def emit_fields(
        self,
        formatter: JsonFormatter,
        level: int,
        logger: str,
        request_id: str | None,
        extras: dict[str, Any],
        message: str,
        args: tuple[object, ...],
    ) -> None:
        """What `emit` does for a record, from the record's fields (keyvault.logs.log_line's way
        in): formatted under the handler's lock, as Handler.handle formats a record (the formatter
        keeps the text of the current second, and another thread may be logging too), and a line
        that cannot be formatted goes to handleError instead of raising."""
        with self.lock or contextlib.nullcontext():
            try:
                line = formatter.line(
                    time.time(),
                    logging.getLevelName(level),
                    logger,
                    message % args if args else message,
                    request_id,
                    extras,
                )
            except Exception:
                self.handleError(
                    logging.makeLogRecord({"msg": "a log line could not be formatted"})
                )
                return
            self._write_or_keep(line)

    def _write_or_keep(self, line: str) -> None:
        line += self.terminator
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_pending()  # lines kept by a loop that has ended go first
            self._write_now(line)
            return
        if self._scheduled_in is not loop:
            wait = self._last_write + self.WRITE_INTERVAL_SECONDS - time.monotonic()
            if wait > 0:
                loop.call_later(wait, self._write_pending)
            else:
                loop.call_soon(self._write_pending)
            self._scheduled_in = loop
        self._pending.append(line)

    def _write_now(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "log lines could not be written"}))

    def flush(self) -> None:
        # Also what logging.shutdown calls at exit: no kept line is lost when the loop is gone.
        self._write_pending()
        super().flush()

    def _write_pending(self) -> None:
        with self.lock or contextlib.nullcontext():
            if not self._pending:
                return
            lines, self._pending = self._pending, []
            self._last_write = time.monotonic()
            self._scheduled_in = None
            for chunk in _whole_lines_up_to(lines, select.PIPE_BUF):
                self._write_now(chunk)


def _whole_lines_up_to(lines: list[str], limit: int) -> Iterator[str]:
    """`lines` joined into as few strings as fit in `limit` bytes each; a longer line goes alone."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        length = len(line) if line.isascii() else len(line.encode("utf-8"))
        if chunk and size + length > limit:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += length
    if chunk:
        yield "".join(chunk)


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A dictConfig for this process and for each worker uvicorn spawns (it applies it in each)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "keyvault.observability.logs.JsonFormatter"}},
        "handlers": {
            "stdout": {
                "class": "keyvault.observability.logs.LineHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        # Libraries speak at WARNING and above only: at DEBUG some of them (aiosqlite) log every
        # statement with its parameters.
        "root": {"handlers": ["stdout"], "level": "WARNING"},
        "loggers": {
            "keyvault": {"handlers": [], "propagate": True, "level": level},
            # uvicorn's own lines (startup, shutdown, protocol errors) go through the JSON handler;
            # its access log is replaced by keyvault.access, which knows route templates and actors.
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
        },
    }
