"""Recording audit events: in the caller's transaction for mutations, by group commit for the rest.

A mutation (PUT, DELETE) writes its event in the request's own transaction, so the change and its
record commit together or not at all (PUTs share that transaction with concurrent PUTs, see
key_writes). Reads and refusals go through group commit (batching.BatchQueue): the first event to
arrive while no flush is running is flushed at once; events arriving while a flush is in flight
wait for it and go out together in the next one (which first lets the loop run what the last one
released, so that those reads' next events join it), so a lone request pays one short transaction
and a busy server pays one per batch. Each caller waits for the commit of its own event, and a
failure to store it surfaces as `AuditUnavailable` (503): no key is handed out and no denial goes
unrecorded.

Every stored event is also logged once, after its commit, as one JSON line on "keyvault.audit".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, Final

from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from keyvault.audit import repository as audit_repository
from keyvault.audit.events import (
    Action,
    AuditEvent,
    ChainedEvent,
    ChainHead,
    Outcome,
    UpstreamCall,
    audit_key,
    outcome_for,
)
from keyvault.audit.repository import ChainHeadMissingError, Executor
from keyvault.audit.verification import ChainVerifier, Verification
from keyvault.crypto.records import Keyring, RootKey
from keyvault.db.batching import Batch, BatchQueue, fail
from keyvault.db.engine import Timeouts, create_engine, is_database_outage
from keyvault.errors import AuditUnavailable, Problem
from keyvault.observability.logs import log_line

log = logging.getLogger("keyvault")
audit_log = logging.getLogger("keyvault.audit")

MAX_BATCH: Final = 256


def log_event(chained: ChainedEvent) -> None:
    # The fields go in `extra`, for logs.JsonFormatter to nest under "audit"; the message only
    # says what happened, so that the line does not carry the event twice.
    if not audit_log.isEnabledFor(logging.INFO):
        return
    log_line(
        audit_log,
        logging.INFO,
        {"audit": chained.log_record(), "request_id": chained.event.request_id},
        "audit event: %s %s",
        chained.event.action,
        chained.event.outcome,
    )


class AuditTrail:
    """The process's audit writer. New links use the keyring's current root key."""

    def __init__(
        self, database_url: str, timeouts: Timeouts, keyring: Callable[[], Keyring]
    ) -> None:
        # An engine of its own: the reads waiting on a batch each hold a connection of the request
        # pool, and a full request pool must never stop the batch that frees them. It has the
        # request engine's timeouts: a refusal waits for its event, and must not outwait a read.
        self._engine = create_engine(database_url, timeouts)
        self._compare_and_swap = self._engine.dialect.name == "postgresql"
        self._connection: AsyncConnection | None = None  # autocommit, for append_after
        self._head: ChainHead | None = None  # the head as this process last wrote it
        self._keyring = keyring
        self._keys: dict[str, bytes] = {}
        self._group: BatchQueue[AuditEvent, ChainedEvent] = BatchQueue(
            self._flush, MAX_BATCH, gather_released=True
        )

    async def record(self, event: AuditEvent) -> ChainedEvent:
        """Store `event` by group commit and return once it is committed."""
        return await self._group.submit(event)

    def record_soon(self, event: AuditEvent) -> asyncio.Future[ChainedEvent]:
        """Start storing `event` by group commit; await the future for its commit."""
        return self._group.submit(event)

    async def record_in(self, session: AsyncSession, event: AuditEvent) -> None:
        """Store `event` in `session`'s transaction; it is logged only if that transaction commits."""
        try:
            (chained,) = await self._append(session, [event])
        except (SQLAlchemyError, ChainHeadMissingError) as error:
            log.error("audit event could not be stored (%s)", type(error).__name__)
            raise AuditUnavailable() from None
        sqlalchemy_event.listen(
            session.sync_session, "after_commit", lambda _session: log_event(chained), once=True
        )

    def chain_key(self) -> tuple[RootKey, bytes]:
        """The root key new links are made under, and the audit key derived from it."""
        root = self._keyring().current
        return root, self._key(root)

    async def aclose(self) -> None:
        await self._group.aclose()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        await self._engine.dispose()

    async def _flush(self, batch: Batch[AuditEvent, ChainedEvent]) -> None:
        try:
            chained = await self._store_batch([event for event, _ in batch])
        except BaseException as error:
            fail(batch, AuditUnavailable)
            if is_database_outage(error):
                # The events queued behind this batch would meet the same outage (batching).
                self._group.fail_queued(AuditUnavailable)
            if not isinstance(error, Exception):
                raise
            log.error("audit events could not be stored (%s)", type(error).__name__)
            return
        for (_, future), stored in zip(batch, chained, strict=True):
            if not future.done():
                future.set_result(stored)

    async def _store_batch(self, events: Sequence[AuditEvent]) -> list[ChainedEvent]:
        chained = None
        if self._compare_and_swap and self._head is not None:
            chained = await self._append_after_known_head(events)
        if chained is None:
            async with self._engine.begin() as connection:
                chained = await self._append(connection, events)
        self._head = ChainHead(chained[-1].seq, chained[-1].link, None, None)
        for stored in chained:
            log_event(stored)
        return chained

    async def _append_after_known_head(
        self, events: Sequence[AuditEvent]
    ) -> list[ChainedEvent] | None:
        # One batch runs at a time, so one connection is kept for this rather than checked out
        # (and pinged) per batch; after any failure it is dropped and the next batch reconnects.
        assert self._head is not None
        if self._connection is None:
            connection = await self._engine.connect()
            self._connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        connection = self._connection
        root = self._keyring().current
        try:
            # The asyncpg connection itself: SQLAlchemy's statement layer cost more CPU than the
            # append does; no transaction is open on it (AUTOCOMMIT, and nothing else runs on it).
            driver = (await connection.get_raw_connection()).driver_connection
            return await audit_repository.append_after(
                driver, self._head, root, self._key(root), events
            )
        except BaseException:
            self._connection = self._head = None
            with contextlib.suppress(Exception):
                await connection.invalidate()
            raise

    async def _append(self, executor: Executor, events: Sequence[AuditEvent]) -> list[ChainedEvent]:
        root = self._keyring().current
        return await audit_repository.append(executor, root, self._key(root), events)

    def _key(self, root: RootKey) -> bytes:
        key = self._keys.get(root.key_id)
        if key is None:
            key = self._keys[root.key_id] = audit_key(root)
        return key


async def record_operation(
    session: AsyncSession, root: RootKey, action: Action, operation: str
) -> ChainedEvent:
    """An operator's operation on the keyring (a rotation, a recovery kit, a recovery), in
    `session`'s transaction, linked under `root`. There is no token: `operation` names the
    command in the user agent field. Log it with `log_event` once the transaction committed."""
    event = AuditEvent.create(
        action=action, outcome=Outcome.ok, target=None, user_agent=f"keyvault {operation}"
    )
    (chained,) = await audit_repository.append(session, root, audit_key(root), [event])
    return chained


async def verify_stored_chain(
    executor: Executor, keyring: Keyring, audit_keys: Mapping[str, bytes] | None = None
) -> Verification:
    """Walk the stored chain with the keyring's keys (current and retired) and the audit keys
    kept for removed root keys, a chunk at a time.

    Run it in one snapshot (REPEATABLE READ on Postgres) when the service may be writing, so the
    events and the head row are read as of the same moment.
    """
    verifier = ChainVerifier(keyring.root, audit_keys or {})
    async for stored in audit_repository.walk(executor):
        broken = verifier.feed(stored)
        if broken is not None:
            return broken
    return verifier.finish(await audit_repository.get_head(executor))


class RequestAudit:
    """The audit entry of one request to a key operation: who, what, where; then the outcome.

    It reads the request from its ASGI scope: `path_params["sub"]` is the target, and the state's
    `principal` (once authenticated) the actor. `provider` names the key's provider (None for a
    request about all of a user's keys); `validation` is what the provider said of a key checked
    on save, once it was asked; `call` what a call through the provider proxy did.
    """

    __slots__ = (
        "_action",
        "_pending",
        "_provider",
        "_scope",
        "_trail",
        "call",
        "recorded",
        "validation",
    )

    def __init__(
        self,
        trail: AuditTrail,
        scope: MutableMapping[str, Any],
        action: Action,
        provider: str | None = None,
    ) -> None:
        self._trail = trail
        self._scope = scope
        self._action = action
        self._provider = provider
        self._pending: asyncio.Future[ChainedEvent] | None = None
        self.recorded = False
        self.validation: str | None = None
        self.call: UpstreamCall | None = None

    def succeeded(self, *, key_version: int | None) -> None:
        """A read: its event goes to the group commit now; `settled` waits for that commit."""
        self._pending = self._trail.record_soon(self._event(Outcome.ok, key_version))
        self.recorded = True

    async def settled(self) -> None:
        """Wait for the commit of an event started by `succeeded`; AuditUnavailable if it failed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    def success_event(self) -> AuditEvent:
        """A mutation's event for a writer that stores it in the change's own transaction
        (key_writes.KeyWrites fills in the key version); set `recorded` once that committed."""
        return self._event(Outcome.ok, None)

    async def succeeded_in(self, session: AsyncSession, *, key_version: int | None) -> None:
        """A mutation: its event joins the change in `session`'s transaction. Set `recorded` once
        that committed: a failed commit takes the event with it, and the failure needs its own."""
        await self._trail.record_in(session, self._event(Outcome.ok, key_version))

    async def failed(self, error: Exception, *, key_version: int | None = None) -> None:
        """The request ends without success: a refusal (a `Problem`) or an error; `key_version`
        names the key a proxied call that failed was made with."""
        outcome = outcome_for(error) if isinstance(error, Problem) else Outcome.error
        self.recorded = True
        await self._trail.record(self._event(outcome, key_version))

    def _event(self, outcome: Outcome, key_version: int | None) -> AuditEvent:
        scope = self._scope
        state = scope.get("state", {})
        principal = state.get("principal")
        client = scope.get("client")
        user_agent = next(
            (value.decode("latin-1") for name, value in scope["headers"] if name == b"user-agent"),
            None,
        )
        return AuditEvent.create(
            action=self._action,
            outcome=outcome,
            target=scope.get("path_params", {}).get("sub"),
            actor=getattr(principal, "sub", None),
            client_id=getattr(principal, "client_id", None),
            key_version=key_version,
            request_id=state.get("request_id"),
            client_address=client[0] if client else None,
            user_agent=user_agent,
            provider=self._provider,
            validation=self.validation,
            call=self.call,
        )
