"""A small cache of bearer tokens that already passed verification, so a caller's repeated token
is not re-verified on every request (PyJWT's decode is the largest single cost of a read).

Only successful verifications go in; a failure is never remembered, so a bad token is checked
(and refused) every time. The key is the exact token string: a token differing in any byte, its
signature included, is a miss and goes through full verification. An entry lives no longer than
the token itself would pass verification (its `exp` plus the configured leeway) and never longer
than `max_age_seconds`, so a signing key dropped from the identity provider's key set stops being
honoured within that time. The cache is bounded: least recently used entries go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Generic, TypeVar

DEFAULT_MAX_ENTRIES: Final = 4096
DEFAULT_MAX_AGE_SECONDS: Final = 60.0
# Longer strings are verified every time rather than held in memory.
MAX_TOKEN_LENGTH: Final = 4096

V = TypeVar("V")


class VerifiedTokenCache(Generic[V]):
    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._entries: OrderedDict[str, tuple[V, float]] = OrderedDict()
        self._max_entries = max_entries
        self._max_age = max_age_seconds
        self._clock = clock

    def __repr__(self) -> str:  # never show the tokens it holds
        return f"VerifiedTokenCache(entries={len(self._entries)}, max_entries={self._max_entries})"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> V | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        value, valid_until = entry
        if self._clock() >= valid_until:
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return value

    def put(self, token: str, value: V, expires_at: float) -> None:
        """Remember `value` for `token` until `expires_at` (a Unix time), at most max_age."""
        if len(token) > MAX_TOKEN_LENGTH or self._max_entries <= 0:
            return
        now = self._clock()
        valid_until = min(expires_at, now + self._max_age)
        if valid_until <= now:
            return
        self._entries[token] = (value, valid_until)
        self._entries.move_to_end(token)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
