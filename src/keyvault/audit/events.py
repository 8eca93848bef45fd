"""Audit events and the HMAC chain that makes quiet edits to them evident.

    audit key  = HKDF(root key, info = "keyvault/audit")       per master key, named by its key id
    link(n)    = HMAC-SHA256(audit key, link(n-1) ‖ canonical(event n))       link(0) = 32 zeros
    canonical  = compact JSON, sorted keys, of every stored field but the link, seq and key id included;
                 the OPTIONAL_FIELDS (provider, validation, a proxied call's) only when set, so
                 events from before they existed hash as they did then
    head MAC   = HMAC-SHA256(audit key, "keyvault/audit-head" ‖ seq ‖ link)   of the last event

Every event names the key id of the root key that linked it, so the chain stays verifiable across
rotations: retired root keys are in the keyring, and a removed one leaves its audit key behind. The head row (last seq, link, MAC)
lets `verify` notice a chain cut short at its tail; restoring an old copy of the head row together
with the cut is the one edit it cannot see, which is what the JSON log lines are a witness against.

Someone with write access to the database alone cannot compute a link, so any edited, inserted or
removed event breaks the chain at the first place it touched (keyvault.audit.verification walks
it). This module does no I/O.
"""

from __future__ import annotations

import hmac
import json
import struct
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from keyvault.crypto.records import RootKey
from keyvault.db.models import (
    AUDIT_ADDRESS_LENGTH,
    AUDIT_PATH_LENGTH,
    AUDIT_REQUEST_ID_LENGTH,
    AUDIT_USER_AGENT_LENGTH,
    AUDIT_VALIDATION_LENGTH,
    PROVIDER_NAME_MAX_LENGTH,
    SUB_MAX_LENGTH,
)
from keyvault.errors import (
    ClientClosedRequest,
    KeyExpired,
    KeyRejectedByProvider,
    Problem,
    ProviderTimeout,
    ProviderUnavailable,
)

AUDIT_KEY_LABEL: Final = b"keyvault/audit"
HEAD_LABEL: Final = b"keyvault/audit-head"
GENESIS_LINK: Final = bytes(32)


class Action(StrEnum):
    put = "put"
    get = "get"
    status = "status"
    delete = "delete"
    list = "list"
    use = "use"  # a call through the provider proxy
    rotate = "rotate"
    import_ = "import"
    recovery_kit = "recovery_kit"
    recover = "recover"


class Outcome(StrEnum):
    ok = "ok"
    not_found = "not_found"
    invalid_request = "invalid_request"
    denied_401 = "denied_401"
    denied_403 = "denied_403"
    precondition_failed = "precondition_failed"
    rate_limited = "rate_limited"
    expired = "expired"
    rejected_by_provider = "rejected_by_provider"
    provider_unavailable = "provider_unavailable"
    cancelled = "cancelled"  # the caller went away before its proxied call ended
    error = "error"


_OUTCOME_BY_STATUS: Final = {
    401: Outcome.denied_401,
    403: Outcome.denied_403,
    404: Outcome.not_found,
    412: Outcome.precondition_failed,
    413: Outcome.invalid_request,
    422: Outcome.invalid_request,
    429: Outcome.rate_limited,
}


def outcome_for_status(status: int) -> Outcome:
    if status < 400:
        return Outcome.ok
    return _OUTCOME_BY_STATUS.get(status, Outcome.error)


def outcome_for(problem: Problem) -> Outcome:
    """A refusal's outcome: by its status, unless it is one the trail names on its own."""
    if isinstance(problem, KeyExpired):
        return Outcome.expired
    if isinstance(problem, KeyRejectedByProvider):
        return Outcome.rejected_by_provider
    if isinstance(problem, ProviderUnavailable | ProviderTimeout):
        return Outcome.provider_unavailable
    if isinstance(problem, ClientClosedRequest):
        return Outcome.cancelled
    return outcome_for_status(problem.status)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, before it has a place in the chain. Holds no key, token or body by design:
    there is no field that could carry one."""

    occurred_at: datetime
    action: str
    outcome: str
    target: str | None
    actor: str | None = None
    client_id: str | None = None
    key_version: int | None = None
    request_id: str | None = None
    client_address: str | None = None
    user_agent: str | None = None
    provider: str | None = None
    validation: str | None = None
    path: str | None = None  # a proxied call's: the allowed path it matched, never the path itself
    upstream_status: int | None = None
    duration_ms: int | None = None
    request_bytes: int | None = None
    response_bytes: int | None = None

    @classmethod
    def create(
        cls,
        *,
        action: str,
        outcome: str,
        target: str | None,
        actor: str | None = None,
        client_id: str | None = None,
        key_version: int | None = None,
        request_id: str | None = None,
        client_address: str | None = None,
        user_agent: str | None = None,
        provider: str | None = None,
        validation: str | None = None,
        call: UpstreamCall | None = None,
        occurred_at: datetime | None = None,
    ) -> AuditEvent:
        """An event whose text fields are cleaned and cut to what their columns hold."""
        return cls(
            occurred_at=(occurred_at or datetime.now(UTC)).astimezone(UTC),
            action=action,
            outcome=outcome,
            target=_clean(target, SUB_MAX_LENGTH),
            actor=_clean(actor, SUB_MAX_LENGTH),
            client_id=_clean(client_id, SUB_MAX_LENGTH),
            key_version=key_version,
            request_id=_clean(request_id, AUDIT_REQUEST_ID_LENGTH),
            client_address=_clean(client_address, AUDIT_ADDRESS_LENGTH),
            user_agent=_clean(user_agent, AUDIT_USER_AGENT_LENGTH),
            provider=_clean(provider, PROVIDER_NAME_MAX_LENGTH),
            validation=_clean(validation, AUDIT_VALIDATION_LENGTH),
            path=_clean(call.path, AUDIT_PATH_LENGTH) if call is not None else None,
            upstream_status=call.upstream_status if call is not None else None,
            duration_ms=call.duration_ms if call is not None else None,
            request_bytes=call.request_bytes if call is not None else None,
            response_bytes=call.response_bytes if call is not None else None,
        )


@dataclass(slots=True)
class UpstreamCall:
    """What an audit event says of a call through the provider proxy, filled in as it goes; no
    body, header or URL, only the allowed path it matched."""

    path: str | None = None
    upstream_status: int | None = None
    duration_ms: int | None = None
    request_bytes: int | None = None
    response_bytes: int | None = None


# Left out of the hash when empty: an event linked before these fields existed hashes as it did.
OPTIONAL_FIELDS: Final = (
    "provider",
    "validation",
    "path",
    "upstream_status",
    "duration_ms",
    "request_bytes",
    "response_bytes",
)


@dataclass(frozen=True, slots=True)
class ChainedEvent:
    """An event as stored: its place in the chain, the key id that linked it, and the link."""

    seq: int
    key_id: str
    link: bytes
    event: AuditEvent

    def row(self) -> dict[str, Any]:
        return {
            **_fields(self.event),
            **{name: getattr(self.event, name) for name in OPTIONAL_FIELDS},
            "seq": self.seq,
            "key_id": self.key_id,
            "link": self.link,
        }

    def log_record(self) -> dict[str, Any]:
        """The event as one JSON-ready log entry; the link lets a log store witness the chain."""
        fields = _canonical_fields(self.seq, self.key_id, self.event)
        return {**fields, "link": self.link.hex()}


def audit_key(root: RootKey) -> bytes:
    return root.subkey(AUDIT_KEY_LABEL)


def canonical(seq: int, key_id: str, event: AuditEvent) -> bytes:
    fields = _canonical_fields(seq, key_id, event)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def chain_link(key: bytes, previous: bytes, seq: int, key_id: str, event: AuditEvent) -> bytes:
    return hmac.digest(key, previous + canonical(seq, key_id, event), "sha256")


def head_mac(key: bytes, seq: int, link: bytes) -> bytes:
    return hmac.digest(key, HEAD_LABEL + struct.pack(">Q", seq) + link, "sha256")


def link_events(
    root: RootKey, key: bytes, previous: bytes, first_seq: int, events: Iterable[AuditEvent]
) -> list[ChainedEvent]:
    """Give `events` the sequence numbers from `first_seq` on, each linked to the one before."""
    chained = []
    for offset, event in enumerate(events):
        seq = first_seq + offset
        previous = chain_link(key, previous, seq, root.key_id, event)
        chained.append(ChainedEvent(seq, root.key_id, previous, event))
    return chained


@dataclass(frozen=True, slots=True)
class ChainHead:
    seq: int
    link: bytes
    key_id: str | None
    mac: bytes | None


def _canonical_fields(seq: int, key_id: str, event: AuditEvent) -> dict[str, Any]:
    fields = _fields(event)
    fields["occurred_at"] = _timestamp(event.occurred_at)
    fields["seq"] = seq
    fields["key_id"] = key_id
    for name in OPTIONAL_FIELDS:
        value = getattr(event, name)
        if value is not None:
            fields[name] = value
    return fields


def _fields(event: AuditEvent) -> dict[str, Any]:
    # By hand rather than dataclasses.asdict (a deep copy): this runs for every read.
    return {
        "occurred_at": event.occurred_at,
        "action": event.action,
        "outcome": event.outcome,
        "target": event.target,
        "actor": event.actor,
        "client_id": event.client_id,
        "key_version": event.key_version,
        "request_id": event.request_id,
        "client_address": event.client_address,
        "user_agent": event.user_agent,
    }


def _timestamp(moment: datetime) -> str:
    # Both databases keep microseconds; the chain hashes exactly what comes back from them.
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _clean(value: str | None, limit: int) -> str | None:
    """Text that any database column takes: no control characters, valid UTF-8, cut to `limit`."""
    if value is None:
        return None
    if value.isprintable():  # the common case, checked in C; no control or surrogate characters
        return value[:limit]
    cleaned = "".join("?" if unicodedata.category(char) in ("Cc", "Cs") else char for char in value)
    return cleaned[:limit]


def event_from_row(row: Mapping[Any, Any]) -> ChainedEvent:
    event = AuditEvent(
        occurred_at=row["occurred_at"],
        action=row["action"],
        outcome=row["outcome"],
        target=row["target"],
        actor=row["actor"],
        client_id=row["client_id"],
        key_version=row["key_version"],
        request_id=row["request_id"],
        client_address=row["client_address"],
        user_agent=row["user_agent"],
        **{name: row[name] for name in OPTIONAL_FIELDS},
    )
    return ChainedEvent(row["seq"], row["key_id"], bytes(row["link"]), event)
