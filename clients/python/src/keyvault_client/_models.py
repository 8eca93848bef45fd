"""What the calls return: a key's status (never the key) and the entries of a user's access log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keyvault_client._errors import KeyVaultError


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """One provider key's status. `etag` is what `put_api_key(if_match=...)` takes, when known."""

    sub: str
    provider: str
    has_api_key: bool
    last4: str | None
    label: str | None
    created_at: datetime | None
    updated_at: datetime | None
    expires_at: datetime | None
    expired: bool
    version: int | None
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class AccessLogEntry:
    """One use of a user's keys: who (`actor`), through which service, what, and how it ended."""

    occurred_at: datetime
    actor: str | None
    client_id: str | None
    provider: str | None
    action: str
    outcome: str


class UnreadableAnswer(KeyVaultError):
    """keyvault answered success with a body this client cannot read (a proxy's page, a newer or
    older server's format)."""


def key_status(body: Any, provider: str, etag: str | None = None) -> KeyStatus:
    """A status from its JSON. Provider, label and expiry default when a server does not send them."""
    fields = _object(body)
    return KeyStatus(
        sub=_text(fields, "sub"),
        provider=_optional_text(fields, "provider") or provider,
        has_api_key=_bool(fields, "has_api_key", default=True),
        last4=_optional_text(fields, "last4"),
        label=_optional_text(fields, "label"),
        created_at=_optional_time(fields, "created_at"),
        updated_at=_optional_time(fields, "updated_at"),
        expires_at=_optional_time(fields, "expires_at"),
        expired=_bool(fields, "expired", default=False),
        version=_optional_int(fields, "version"),
        etag=etag,
    )


def access_log_entry(body: Any) -> AccessLogEntry:
    fields = _object(body)
    occurred_at = _optional_time(fields, "occurred_at")
    if occurred_at is None:
        raise _unreadable("occurred_at")
    return AccessLogEntry(
        occurred_at=occurred_at,
        actor=_optional_text(fields, "actor"),
        client_id=_optional_text(fields, "client_id"),
        provider=_optional_text(fields, "provider"),
        action=_text(fields, "action"),
        outcome=_text(fields, "outcome"),
    )


def required_field(body: Any, name: str) -> Any:
    """One field of a JSON object, which must be there."""
    fields = _object(body)
    if name not in fields:
        raise _unreadable(name)
    return fields[name]


def text_field(body: Any, name: str) -> str:
    return _text(_object(body), name)


def optional_time_field(body: Any, name: str) -> datetime | None:
    return _optional_time(_object(body), name)


def _unreadable(name: str) -> UnreadableAnswer:
    return UnreadableAnswer(f"keyvault's answer has no readable `{name}`")


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise UnreadableAnswer("keyvault's answer is not a JSON object")
    return body


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str):
        raise _unreadable(name)
    return value


def _optional_text(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise _unreadable(name)
    return value


def _bool(fields: dict[str, Any], name: str, *, default: bool) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise _unreadable(name)
    return value


def _optional_int(fields: dict[str, Any], name: str) -> int | None:
    value = fields.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _unreadable(name)
    return value


def _optional_time(fields: dict[str, Any], name: str) -> datetime | None:
    value = _optional_text(fields, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _unreadable(name) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
