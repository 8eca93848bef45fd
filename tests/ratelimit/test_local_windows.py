"""The in-memory sliding-window counter admits and refuses exactly as `limits`' own does."""

from __future__ import annotations

import math
import time

from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from keyvault.ratelimit.local_windows import SWEEP_AT_LEAST, LocalSlidingWindows


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_burst_is_admitted_and_refused_as_limits_does() -> None:
    # An hour-long window: the burst cannot straddle two windows in practice.
    item = parse("5/hour")
    reference = SlidingWindowCounterRateLimiter(MemoryStorage())
    local = LocalSlidingWindows()
    expected, seen = [], []
    for _ in range(8):
        admitted = await reference.hit(item, "caller")
        retry = None
        if not admitted:
            stats = await reference.get_window_stats(item, "caller")
            retry = max(1, math.ceil(stats.reset_time - time.time()))
        expected.append((admitted, retry))
        mine = local.hit(item, "caller")
        seen.append((mine is None, mine))
    assert [admitted for admitted, _ in seen] == [admitted for admitted, _ in expected]
    assert seen[:5] == [(True, None)] * 5
    for (_, mine), (_, theirs) in zip(seen[5:], expected[5:], strict=True):
        assert mine is not None
        assert theirs is not None
        assert abs(mine - theirs) <= 1


def test_the_previous_window_counts_by_the_time_left_in_the_current_one() -> None:
    item = parse("10/minute")
    clock = Clock(600 * 60 + 59.0)  # the last second of a window
    windows = LocalSlidingWindows(clock)
    assert all(windows.hit(item, "caller") is None for _ in range(10))
    assert windows.hit(item, "caller") is not None

    clock.now = 601 * 60 + 15.0  # 45 s left: the previous 10 weigh 10 · 45/60 = 7.5
    admitted = [windows.hit(item, "caller") is None for _ in range(4)]
    assert admitted == [True, True, True, False]  # floor(7.5 + 3) + 1 > 10


def test_a_full_window_says_when_to_retry() -> None:
    item = parse("2/minute")
    clock = Clock(100 * 60 + 30.0)
    windows = LocalSlidingWindows(clock)
    windows.hit(item, "caller")
    windows.hit(item, "caller")
    assert windows.hit(item, "caller") == 30  # the current window ends in 30 s


def test_budgets_are_kept_per_identifier_and_per_limit() -> None:
    windows = LocalSlidingWindows(Clock(1_000_000.0))
    assert windows.hit(parse("1/minute"), "a") is None
    assert windows.hit(parse("1/minute"), "b") is None
    assert windows.hit(parse("2/minute"), "a") is None
    assert windows.hit(parse("1/minute"), "a") is not None


def test_keys_two_windows_old_are_swept_once_the_table_grows() -> None:
    item = parse("1/second")
    clock = Clock(5_000.0)
    windows = LocalSlidingWindows(clock)
    for address in range(SWEEP_AT_LEAST - 1):
        windows.hit(item, f"10.0.{address // 256}.{address % 256}")
    clock.now += 2.5
    windows.hit(item, "192.0.2.1")  # reaches the sweep threshold
    assert len(windows._windows) == 1
