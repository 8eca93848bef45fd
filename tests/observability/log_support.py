"""What the log tests share: a key that must never reach a line, one record formatted as JSON, and
a logger writing through a LineHandler to a stream that keeps each flush."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from typing import Any

from keyvault.observability.logs import (
    JsonFormatter,
    LineHandler,
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


class RecordingStream(io.StringIO):
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


def logger_writing_to(stream: io.StringIO, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers = [LineHandler(stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger
