"""Group commit's queue: work submitted while a batch runs waits and goes together into the next.

The first item to arrive while no batch is running starts one at once, so a lone request waits
for nothing; items arriving while a batch is in flight are run together in the next, so a busy
server pays one transaction per batch instead of one per request. Used by the audit trail's reads
(audit_trail.AuditTrail) and by PUTs (key_writes.KeyWrites).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from keyvault.errors import AuditUnavailable

Item = TypeVar("Item")
Result = TypeVar("Result")
Batch = list[tuple[Item, "asyncio.Future[Result]"]]


class BatchQueue(Generic[Item, Result]):
    """Runs submitted items in batches of at most `max_batch`, one batch at a time.

    `run` gets each batch and must settle every future in it (with a result or an exception).
    A future that a cancelled queue never ran is failed with AuditUnavailable (503): nothing was
    stored for it.

    With `gather_released`, the queue lets the event loop run what was ready, once, after each
    batch before it takes the next: the requests a batch released go on and submit their next
    items, which then join the next batch instead of trailing it in a batch of their own. Under
    load batches grow and each item costs less CPU, for a turn of the loop of extra wait per
    batch. The audit trail's reads gain; PUTs do not, their batches being bound by database round
    trips rather than the CPU, so their queue goes without it.
    """

    def __init__(
        self,
        run: Callable[[Batch[Item, Result]], Awaitable[None]],
        max_batch: int,
        *,
        gather_released: bool = False,
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._gather_released = gather_released
        self._queue: Batch[Item, Result] = []
        self._runner: asyncio.Task[None] | None = None

    def submit(self, item: Item) -> asyncio.Future[Result]:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._drain())
        return future

    def fail_queued(self, error: Callable[[], BaseException]) -> None:
        """Settle every item still waiting for a batch with `error()`; none of them is ever run.

        For a batch that met a database outage: what waits behind it would meet the same outage
        after it, and pay the timeouts again on top of its wait.
        """
        queued, self._queue = self._queue, []
        fail(queued, error)

    async def aclose(self) -> None:
        """Wait for what is already queued (graceful shutdown)."""
        if self._runner is not None:
            await self._runner

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._run(batch)
                if self._gather_released:
                    await asyncio.sleep(0)
        finally:
            self._runner = None
            fail(self._queue, AuditUnavailable)  # only left over when this task was cancelled
            self._queue = []


def fail(batch: Batch[Item, Result], error: Callable[[], BaseException]) -> None:
    """Settle every future of `batch` still waiting with the exception `error()` makes."""
    for _, future in batch:
        if not future.done():
            future.set_exception(error())
