"""The rules the audit routes hold their query parameters to (web.audit_routes declares them).

Each rule is declared once and serves twice: pydantic enforces it and the OpenAPI schema states it,
so a schema-driven client is refused nothing its schema allows. Times are RFC 3339 date-times with
an offset; `sub` and `actor` filters are subs as the trail stores them; a cursor is the opaque
`next_cursor` of an earlier page, which only the route can tell from a forgery.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Annotated, Final

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from keyvault.errors import InvalidRequest

# The trail stores no control character in an actor or target (AuditEvent.create replaces them),
# so a filter holding one matches nothing, and Postgres refuses a NUL in any text parameter.
FILTER_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]+$"

# RFC 3339 section 5.6, "T" and "Z" in either case. pydantic's own datetime parsing also takes a
# bare number as Unix time, a date alone, a missing offset or "+hhmm", which the schema's
# `format: date-time` does not allow; [0-9] because \d takes other scripts' digits too.
_FULL_DATE: Final = "[0-9]{4}-[0-9]{2}-[0-9]{2}"
_FULL_TIME: Final = r"[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
DATE_TIME_PATTERN: Final = f"^{_FULL_DATE}[Tt]{_FULL_TIME}$"
_DATE_TIME = re.compile(DATE_TIME_PATTERN)

CURSOR_PATTERN: Final = r"^[A-Za-z0-9_-]+$"
CURSOR_MAX_LENGTH: Final = 64
# Sequence numbers are signed 64-bit integers in both databases; a larger one cannot be bound.
_MAX_SEQ: Final = 2**63 - 1
_CURSOR_TEXT = re.compile(r"seq:([1-9][0-9]{0,18})")


def _rfc3339_text(value: object) -> object:
    if not isinstance(value, str) or _DATE_TIME.fullmatch(value) is None:
        raise PydanticCustomError(
            "rfc3339_date_time",
            "should be an RFC 3339 date-time with Z or an offset, such as 2026-11-28T13:05:00Z",
        )
    return value


def _in_utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is past the last datetime in UTC
        raise PydanticCustomError(
            "date_time_range", "should fall within the years 1 to 9999 once in UTC"
        ) from None


UtcDateTime = Annotated[
    datetime,
    BeforeValidator(_rfc3339_text),
    AfterValidator(_in_utc),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": DATE_TIME_PATTERN}),
]


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The sequence number in a cursor `encode_cursor` made; InvalidRequest for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        text = ""
    match = _CURSOR_TEXT.fullmatch(text)
    if match is None or int(match[1]) > _MAX_SEQ:
        raise InvalidRequest("query.cursor: is not a cursor this service issued")
    return int(match[1])
