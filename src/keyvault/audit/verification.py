"""Checking the audit chain: walking the stored events in order and reporting the first one that
was edited, inserted or removed, then whether the head row agrees that the chain ends there (the
scheme is in keyvault.audit.events). This module does no I/O.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from keyvault.audit.events import (
    GENESIS_LINK,
    ChainedEvent,
    ChainHead,
    audit_key,
    chain_link,
    head_mac,
)
from keyvault.crypto.records import RootKey


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
