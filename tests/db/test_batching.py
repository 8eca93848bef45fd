"""Group commit's queue: how items are gathered into batches."""

from __future__ import annotations

import asyncio

import pytest

from keyvault.db.batching import Batch, BatchQueue
from keyvault.errors import AuditUnavailable


async def _batch_sizes(*, gather_released: bool) -> list[int]:
    """Five requests each store an item, then another once the first is stored; a sixth item
    arrives while the first batch is in flight."""
    sizes: list[int] = []
    in_flight, straggler_queued = asyncio.Event(), asyncio.Event()

    async def run(batch: Batch[int, None]) -> None:
        sizes.append(len(batch))
        in_flight.set()
        await straggler_queued.wait()  # the database round trip
        for _, future in batch:
            future.set_result(None)

    queue: BatchQueue[int, None] = BatchQueue(run, 100, gather_released=gather_released)

    async def request(n: int) -> None:
        await queue.submit(n)
        await queue.submit(n + 100)

    async def straggler() -> None:
        await in_flight.wait()
        stored = queue.submit(-1)
        straggler_queued.set()
        await stored

    await asyncio.gather(*(request(n) for n in range(5)), straggler())
    return sizes


async def test_items_released_by_a_batch_join_the_next_one_when_gathered() -> None:
    assert await _batch_sizes(gather_released=True) == [5, 6]


async def test_without_gathering_the_next_batch_goes_with_what_is_queued() -> None:
    assert await _batch_sizes(gather_released=False) == [5, 1, 5]


async def test_items_a_cancelled_queue_never_ran_fail_as_audit_unavailable() -> None:
    started = asyncio.Event()

    async def run(batch: Batch[int, None]) -> None:
        started.set()
        await asyncio.sleep(3600)

    queue: BatchQueue[int, None] = BatchQueue(run, 1, gather_released=True)
    queue.submit(1)
    second = queue.submit(2)
    await started.wait()
    runner = queue._runner
    assert runner is not None
    runner.cancel()

    with pytest.raises(AuditUnavailable):
        await second


async def test_items_failed_while_queued_are_never_run() -> None:
    ran: list[int] = []
    in_flight, release = asyncio.Event(), asyncio.Event()

    async def run(batch: Batch[int, None]) -> None:
        ran.extend(item for item, _ in batch)
        in_flight.set()
        await release.wait()  # the stuck database round trip
        queue.fail_queued(AuditUnavailable)  # it met an outage
        for _, future in batch:
            future.set_exception(AuditUnavailable())

    queue: BatchQueue[int, None] = BatchQueue(run, 100)
    first = queue.submit(1)
    await in_flight.wait()
    queued = [queue.submit(2), queue.submit(3)]
    release.set()

    results = await asyncio.gather(first, *queued, return_exceptions=True)

    assert all(isinstance(result, AuditUnavailable) for result in results)
    await queue.aclose()
    assert ran == [1]
