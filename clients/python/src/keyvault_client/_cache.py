"""The opt-in cache of `get_api_key` answers: at most `MAX_TTL_SECONDS` old, bounded in entries
(least recently used go first), never past a key's own `expires_at`.

Only keys found are kept, so a key stored elsewhere is seen at once by a client that had none.
A client's own put or delete drops every entry of that sub; an answer read while such a drop
happened is not kept (its `ticket` is stale), so no read racing a write can bring the old key back.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

MAX_TTL_SECONDS: Final = 300.0
DEFAULT_MAX_ENTRIES: Final = 1024


class KeyCache:
    def __init__(
        self,
        ttl: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL_SECONDS:
            raise ValueError(
                f"cache_ttl must be more than 0 and at most {MAX_TTL_SECONDS:g} seconds"
            )
        if isinstance(max_entries, bool) or max_entries < 1:
            raise ValueError("cache_size must be at least 1")
        self.ttl = float(ttl)
        self.max_entries = max_entries
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._drops = 0

    def __repr__(self) -> str:
        return f"KeyCache(ttl={self.ttl!r}, max_entries={self.max_entries!r})"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, sub: str, provider: str) -> str | None:
        with self._lock:
            entry = self._entries.get((sub, provider))
            if entry is None:
                return None
            key, until = entry
            if self.clock() >= until:
                del self._entries[(sub, provider)]
                return None
            self._entries.move_to_end((sub, provider))
            return key

    def ticket(self) -> int:
        """Taken before a read is sent; `store` keeps its answer only if no drop happened since."""
        return self._drops

    def store(
        self, sub: str, provider: str, key: str, expires_at: datetime | None, ticket: int
    ) -> None:
        now = self.clock()
        lifetime = self.ttl
        if expires_at is not None:
            lifetime = min(lifetime, (expires_at - datetime.now(UTC)).total_seconds())
        if lifetime <= 0:
            return
        with self._lock:
            if ticket != self._drops:
                return
            self._entries[(sub, provider)] = (key, now + lifetime)
            self._entries.move_to_end((sub, provider))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def drop(self, sub: str) -> None:
        with self._lock:
            self._drops += 1
            for entry in [entry for entry in self._entries if entry[0] == sub]:
                del self._entries[entry]
