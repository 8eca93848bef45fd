"""Group commit for PUTs: concurrent writes share one transaction and one append to the audit chain.

A PUT's change and its audit event commit together or not at all, and appending to the chain
holds the chain head's row lock until the commit. One transaction per PUT therefore serialises
every write on a lock held across several round trips and a disk flush. Here the first PUT to
arrive while no batch is running starts one at once; PUTs arriving meanwhile wait and go together
into the next: one transaction, each write in arrival order (a later write to the same key sees the
earlier one), one append of all their events, one commit. Every caller still gets its own answer:

- a failed precondition (412) writes nothing, so it leaves the rest of its batch alone;
- if the events cannot be stored, the batch is rolled back and every caller in it gets 503;
- a write that fails for any other reason rolls the batch back, and its writes are retried one
  at a time, so one request's error is never another's (unless the database itself is out);
- a batch that meets a database outage fails the PUTs queued behind it with the same 503 at once:
  none of them was sent, so nothing of theirs is written, and none waits out the timeouts again.

A caller that goes away while waiting does not take its write back: it may still be committed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Final

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from keyvault.audit import repository as audit_repository
from keyvault.audit.events import AuditEvent, ChainedEvent
from keyvault.audit.trail import AuditTrail, log_event
from keyvault.db.batching import Batch, BatchQueue, fail
from keyvault.db.engine import driver_connection, is_database_outage, session_scope
from keyvault.errors import AuditUnavailable, PreconditionFailed
from keyvault.keys.put import PutJob, WriteResult, apply_put, written
from keyvault.keys.record_writes import DriverRecordWrites, RecordWrites, SessionRecordWrites, Slot

log = logging.getLogger("keyvault")

MAX_BATCH: Final = 64

Outcome = WriteResult | PreconditionFailed
Append = Callable[[Sequence[AuditEvent]], Awaitable[list[ChainedEvent]]]


class _WriteFailed(Exception):
    """A write statement failed; the batch was rolled back."""

    def __init__(self, error: Exception) -> None:
        super().__init__(type(error).__name__)
        self.error = error


class KeyWrites:
    """The process's PUT writer: Postgres on the pooled driver connection, otherwise a session."""

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        trail: AuditTrail,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._trail = trail
        self._direct = engine.dialect.name == "postgresql"
        self._batches: BatchQueue[PutJob, Outcome] = BatchQueue(self._run, max_batch)

    async def put(self, job: PutJob) -> WriteResult:
        """Run `job` in the next batch; returns once it is committed with its audit event."""
        outcome = await self._batches.submit(job)
        if isinstance(outcome, PreconditionFailed):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        """Wait for the batches already queued (graceful shutdown)."""
        await self._batches.aclose()

    async def _run(self, batch: Batch[PutJob, Outcome]) -> None:
        try:
            outcomes = await self._commit([job for job, _ in batch])
        except _WriteFailed as failed:
            if len(batch) > 1 and _worth_retrying_alone(failed.error):
                for pending in batch:
                    await self._run([pending])
                return
            write_error = failed.error
            fail(batch, lambda: write_error)
            if is_database_outage(write_error):
                self._batches.fail_queued(lambda: write_error)
            return
        except BaseException as error:
            settled = error if isinstance(error, Exception) else AuditUnavailable()
            fail(batch, lambda: settled)
            if isinstance(settled, AuditUnavailable) or is_database_outage(settled):
                self._batches.fail_queued(lambda: settled)
            if not isinstance(error, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def _commit(self, jobs: Sequence[PutJob]) -> list[Outcome]:
        """One transaction: the writes, then their events; logged once the commit is done."""
        root, key = self._trail.chain_key()
        if self._direct:
            async with driver_connection(self._engine) as connection, connection.transaction():
                outcomes, chained = await _write_then_append(
                    DriverRecordWrites(connection),
                    jobs,
                    lambda events: audit_repository.append_on_driver(connection, root, key, events),
                )
        else:
            async with session_scope(self._sessions) as session:
                outcomes, chained = await _write_then_append(
                    SessionRecordWrites(session),
                    jobs,
                    lambda events: audit_repository.append(session, root, key, events),
                )
        for stored in chained:
            log_event(stored)
        return outcomes


async def _write_then_append(
    records: RecordWrites, jobs: Sequence[PutJob], append: Append
) -> tuple[list[Outcome], list[ChainedEvent]]:
    try:
        outcomes = await _write(records, jobs)
    except Exception as error:
        raise _WriteFailed(error) from error
    events = [
        dataclasses.replace(job.event, key_version=outcome.status.version)
        for job, outcome in zip(jobs, outcomes, strict=True)
        if isinstance(outcome, WriteResult)
    ]
    if not events:
        return outcomes, []
    try:
        chained = await append(events)
    except Exception as error:
        log.error("audit events could not be stored (%s)", type(error).__name__)
        raise AuditUnavailable() from None
    return outcomes, chained


async def _write(records: RecordWrites, jobs: Sequence[PutJob]) -> list[Outcome]:
    """Each job's write, in arrival order. Unconditional PUTs to different keys (sub and provider)
    in a row go out as one statement; a conditional PUT, or a second PUT to a key, waits for the
    ones before it."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    pending: dict[Slot, int] = {}  # unconditional PUTs not yet written: slot → index in jobs

    async def write_pending() -> None:
        states = await records.upsert_many(
            [jobs[i].record for i in pending.values()], datetime.now(UTC)
        )
        for slot, index in pending.items():
            outcomes[index] = written(jobs[index].record, states[slot])
        pending.clear()

    for index, job in enumerate(jobs):
        slot = (job.record.sub, job.record.provider)
        if job.precondition.unconditional and slot not in pending:
            pending[slot] = index
            continue
        if pending:
            await write_pending()
        if job.precondition.unconditional:
            pending[slot] = index
            continue
        try:
            outcomes[index] = await apply_put(records, job.record, job.precondition)
        except PreconditionFailed as refused:
            outcomes[index] = refused
    if pending:
        await write_pending()
    done = [outcome for outcome in outcomes if outcome is not None]
    assert len(done) == len(jobs)
    return done


def _worth_retrying_alone(error: Exception) -> bool:
    """A statement error one write may have caused (a constraint, a trigger), not an outage."""
    return isinstance(error, (asyncpg.PostgresError, DBAPIError)) and not is_database_outage(error)
