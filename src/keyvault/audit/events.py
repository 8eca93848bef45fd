"""Audit events and the HMAC chain that makes quiet edits to them evident.

    audit key  = HKDF(root key, info = "keyvault/audit")       per master key, named by its key id
    link(n)    = HMAC-SHA256(audit key, link(n-1) ‖ canonical(event n))       link(0) = 32 zeros
    canonical  = compact JSON, sorted keys, of every stored field but the link, seq and key id included;
                 `provider` and `validation` only when set, so events from before they existed
                 hash as they did then
    head MAC   = HMAC-SHA256(audit key, "keyvault/audit-head" ‖ seq ‖ link)   of the last event

Every event names the key id of the root key that linked it, so the chain stays verifiable across
rotations: retired root keys are in the keyring, and a removed one leaves its audit key behind. The head row (last seq, link, MAC)
lets `verify` notice a chain cut short at its tail; restoring an old copy of the head row together
with the cut is the one edit it cannot see, which is what the JSON log lines are a witness against.

Someone with write access to the database alone cannot compute a link, so any edited, inserted or
removed event breaks the chain at the first place it touched. This module does no I/O.
"""

from __future__ import annotations

import hmac
import json
import struct
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from keyvault.crypto.records import RootKey
from keyvault.db.models import (
    AUDIT_ADDRESS_LENGTH,
    AUDIT_REQUEST_ID_LENGTH,
    AUDIT_USER_AGENT_LENGTH,
    AUDIT_VALIDATION_LENGTH,
    PROVIDER_NAME_MAX_LENGTH,
    SUB_MAX_LENGTH,
)
from keyvault.errors import (
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
            "provider": self.event.provider,
            "validation": self.event.validation,
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


@dataclass(frozen=True, slots=True)
class Verification:
    events_checked: int
    problem: str | None
    first_bad_seq: int | None = None

    @property
    def intact(self) -> bool:
        return self.problem is None


def verify_chain(
    events: Iterable[ChainedEvent], head: ChainHead | None, key_for: Callable[[str], RootKey | None]
) -> Verification:
    """Walk `events` in sequence order; report the first one that was edited, inserted or removed.

    `key_for` maps a key id to its root key (None when that master key is not configured).
    """
    verifier = ChainVerifier(key_for)
    for stored in events:
        broken = verifier.feed(stored)
        if broken is not None:
            return broken
    return verifier.finish(head)


class ChainVerifier:
    """`verify_chain` one event at a time, so a long trail is checked without holding it all."""

    def __init__(
        self,
        key_for: Callable[[str], RootKey | None],
        audit_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        """`key_for` gives the root keys; `audit_keys` the audit keys kept for removed ones."""
        self._key_for = key_for
        self._keys: dict[str, bytes] = dict(audit_keys or {})
        self._previous = GENESIS_LINK
        self._expected_seq = 1
        self.checked = 0

    def feed(self, stored: ChainedEvent) -> Verification | None:
        """None while the chain holds; the first problem otherwise."""
        expected_seq, checked = self._expected_seq, self.checked
        if stored.seq > expected_seq:
            return _broken(
                checked, expected_seq, f"events {expected_seq}..{stored.seq - 1} were removed"
            )
        if stored.seq < expected_seq:
            return _broken(checked, stored.seq, f"event {stored.seq} is out of order")
        event_key = self._key(stored.key_id)
        if event_key is None:
            return _broken(
                checked,
                stored.seq,
                f"event {stored.seq} was linked under root key id {stored.key_id}, which this "
                "configuration does not hold; it cannot be checked",
            )
        expected = chain_link(event_key, self._previous, stored.seq, stored.key_id, stored.event)
        if not hmac.compare_digest(expected, stored.link):
            return _broken(
                checked,
                stored.seq,
                f"event {stored.seq} was edited or inserted (its link does not verify)",
            )
        self._previous, self._expected_seq, self.checked = (
            stored.link,
            expected_seq + 1,
            checked + 1,
        )
        return None

    def finish(self, head: ChainHead | None) -> Verification:
        """After the last event: does the head row agree that the chain ends here?"""
        return _check_head(self.checked, self._expected_seq - 1, self._previous, head, self._key)

    def _key(self, key_id: str) -> bytes | None:
        if key_id not in self._keys:
            root = self._key_for(key_id)
            if root is None:
                return None
            self._keys[key_id] = audit_key(root)
        return self._keys[key_id]


def _check_head(
    checked: int,
    last_seq: int,
    last_link: bytes,
    head: ChainHead | None,
    key: Callable[[str], bytes | None],
) -> Verification:
    if head is None:
        return _broken(checked, last_seq + 1, "the chain head row is missing")
    if head.seq > last_seq:
        return _broken(
            checked, last_seq + 1, f"events {last_seq + 1}..{head.seq} were removed from the end"
        )
    if head.seq < last_seq:
        return _broken(
            checked, head.seq + 1, f"events after {head.seq} were appended outside the chain"
        )
    if not hmac.compare_digest(head.link, last_link):
        return _broken(checked, last_seq, "the chain head does not match the last event")
    if head.seq == 0 and head.mac is None:
        return Verification(checked, None)
    head_key = key(head.key_id) if head.key_id is not None else None
    if head_key is None or head.mac is None:
        return _broken(checked, last_seq, "the chain head's MAC cannot be checked")
    if not hmac.compare_digest(head_mac(head_key, head.seq, head.link), head.mac):
        return _broken(checked, last_seq, "the chain head was rewritten")
    return Verification(checked, None)


def _broken(checked: int, seq: int, problem: str) -> Verification:
    return Verification(checked, problem, seq)


def _canonical_fields(seq: int, key_id: str, event: AuditEvent) -> dict[str, Any]:
    fields = _fields(event)
    fields["occurred_at"] = _timestamp(event.occurred_at)
    fields["seq"] = seq
    fields["key_id"] = key_id
    # Left out when empty: an event linked before these fields existed hashes as it did then.
    if event.provider is not None:
        fields["provider"] = event.provider
    if event.validation is not None:
        fields["validation"] = event.validation
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
        provider=row["provider"],
        validation=row["validation"],
    )
    return ChainedEvent(row["seq"], row["key_id"], bytes(row["link"]), event)
