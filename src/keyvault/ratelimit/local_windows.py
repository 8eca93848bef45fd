"""The sliding-window counter of the `limits` library, kept in this process's memory without it.

`limits`' own async memory storage starts a task to expire old keys on every hit, twice per request
with a per-address and a per-principal budget: a large share of a key read's own CPU time. This is
the same algorithm — and the same answers, checked against `limits` in tests/test_local_windows.py —
over a plain dict: each key holds its current fixed window's count and the previous one's, and a hit
is admitted while

    floor(previous · (time left in the current window) / window + current) + 1 ≤ limit

Keys that have not been hit for two windows are swept out once the dict has grown, so a stream of
new addresses cannot grow it without bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

from limits import RateLimitItem

SWEEP_AT_LEAST: Final = 1024


class LocalSlidingWindows:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # key → (window length, index of the window `current` counts in, previous count, current)
        self._windows: dict[str, tuple[int, int, int, int]] = {}
        self._sweep_at = SWEEP_AT_LEAST

    def hit(self, item: RateLimitItem, *identifiers: str) -> int | None:
        """Spend one unit of `item`'s budget: None when admitted, else seconds until a retry may be."""
        key = item.key_for(*identifiers)
        length = item.get_expiry()
        now = self._clock()
        window = int(now // length)
        previous, current = self._counts(key, window)
        left_in_window = (1 - (now / length) % 1) * length
        weighted = previous * left_in_window / length + current
        if math.floor(weighted) + 1 > item.amount:
            return _retry_after(previous, current, left_in_window, length)
        self._windows[key] = (length, window, previous, current + 1)
        if len(self._windows) >= self._sweep_at:
            self._sweep(now)
        return None

    def _counts(self, key: str, window: int) -> tuple[int, int]:
        stored = self._windows.get(key)
        if stored is None:
            return 0, 0
        _, stored_window, previous, current = stored
        if stored_window == window:
            return previous, current
        if stored_window == window - 1:
            return current, 0
        return 0, 0

    def _sweep(self, now: float) -> None:
        # A key whose counts are both two or more of its own windows old counts for nothing.
        self._windows = {
            key: stored
            for key, stored in self._windows.items()
            if stored[1] >= int(now // stored[0]) - 1
        }
        self._sweep_at = max(SWEEP_AT_LEAST, 2 * len(self._windows))


def _retry_after(previous: int, current: int, left_in_window: float, length: int) -> int:
    # As `limits` computes a refused hit's reset time: the sooner of the previous window's next
    # count sliding out and the current window ending.
    previous_reset = left_in_window % (length / previous) if previous else math.inf
    current_reset = (left_in_window + length) % length if current else math.inf
    return max(1, math.ceil(min(previous_reset, current_reset)))
