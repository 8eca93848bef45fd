"""Every SQL statement of the audit trail. Core statements only: the read path pays for each one.

Appending serialises on the single `audit_head` row: the first statement of an append is an UPDATE
of that row, which takes its row lock on Postgres (and the write lock on SQLite) until the
transaction ends, so two writers can never both extend the chain from the same link.

On Postgres the group commit first tries `append_after`: one statement, run on its own (autocommit,
on the asyncpg connection itself), that extends the chain from the head the writer last saw — a
compare-and-swap on the head row — and inserts the events only if the swap happened. One round trip
instead of five; when another writer moved the head in between, nothing is written and the caller
falls back to `append`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

import asyncpg
from sqlalchemy import Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from keyvault.audit.events import (
    AuditEvent,
    ChainedEvent,
    ChainHead,
    event_from_row,
    head_mac,
    link_events,
)
from keyvault.crypto.records import RootKey
from keyvault.db.models import AuditEventRecord, AuditHead

HEAD_ID: Final = 1
_EVENTS = cast(Table, AuditEventRecord.__table__)
_HEAD = cast(Table, AuditHead.__table__)

Executor = AsyncSession | AsyncConnection


class ChainHeadMissingError(Exception):
    def __init__(self) -> None:
        super().__init__("the audit chain head row is missing")


async def append(
    executor: Executor, root: RootKey, key: bytes, events: Sequence[AuditEvent]
) -> list[ChainedEvent]:
    """Link `events` onto the chain and insert them, in the caller's transaction."""
    claimed = await executor.execute(
        update(_HEAD)
        .where(_HEAD.c.id == HEAD_ID)
        .values(seq=_HEAD.c.seq + len(events))
        .returning(_HEAD.c.seq, _HEAD.c.link)
    )
    row = claimed.one_or_none()
    if row is None:
        raise ChainHeadMissingError()
    last_seq, previous = row
    chained = link_events(root, key, bytes(previous), last_seq - len(events) + 1, events)
    await executor.execute(insert(_EVENTS), [item.row() for item in chained])
    tail = chained[-1]
    await executor.execute(
        update(_HEAD)
        .where(_HEAD.c.id == HEAD_ID)
        .values(link=tail.link, key_id=root.key_id, mac=head_mac(key, tail.seq, tail.link))
    )
    return chained


# audit_events' columns in the order _columns gives them, and their values as one array each ($1 on).
_EVENT_COLUMNS: Final = """seq, occurred_at, actor, client_id, action, target, outcome,
    key_version, request_id, client_address, user_agent, key_id, link, provider, validation,
    path, upstream_status, duration_ms, request_bytes, response_bytes"""
_EVENT_ARRAYS: Final = """$1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::integer[], $9::text[], $10::text[], $11::text[], $12::text[],
    $13::bytea[], $14::text[], $15::text[], $16::text[], $17::integer[], $18::integer[],
    $19::bigint[], $20::bigint[]"""

# The head's compare-and-swap and the events' insert in one statement: the events go in only if
# the swap happened. They travel as one array per column, which asyncpg encodes without JSON.
_APPEND_AFTER = f"""
    WITH head AS (
        UPDATE audit_head SET seq = $21, link = $22, key_id = $23, mac = $24
        WHERE id = $25 AND seq = $26 AND link = $27
        RETURNING 1
    )
    INSERT INTO audit_events ({_EVENT_COLUMNS})
    SELECT * FROM unnest({_EVENT_ARRAYS})
    WHERE EXISTS (SELECT 1 FROM head)
"""


async def append_after(
    connection: asyncpg.Connection,
    head: ChainHead,
    root: RootKey,
    key: bytes,
    events: Sequence[AuditEvent],
) -> list[ChainedEvent] | None:
    """Postgres only, on a driver connection outside any transaction: link `events` after `head`
    in one statement.

    None when the head has moved since (nothing was written). The statement is atomic on its own;
    a concurrent writer holding the head row makes it wait, then find the head changed.
    """
    chained = link_events(root, key, head.link, head.seq + 1, events)
    tail = chained[-1]
    status = await connection.execute(
        _APPEND_AFTER,
        *_columns(chained),
        tail.seq,
        tail.link,
        root.key_id,
        head_mac(key, tail.seq, tail.link),
        HEAD_ID,
        head.seq,
        head.link,
    )
    inserted = int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"
    return chained if inserted == len(chained) else None


def _columns(chained: Sequence[ChainedEvent]) -> list[list[Any]]:
    """The events as one list per audit_events column, in the table's column order."""
    rows = [
        (
            item.seq,
            item.event.occurred_at,
            item.event.actor,
            item.event.client_id,
            item.event.action,
            item.event.target,
            item.event.outcome,
            item.event.key_version,
            item.event.request_id,
            item.event.client_address,
            item.event.user_agent,
            item.key_id,
            item.link,
            item.event.provider,
            item.event.validation,
            item.event.path,
            item.event.upstream_status,
            item.event.duration_ms,
            item.event.request_bytes,
            item.event.response_bytes,
        )
        for item in chained
    ]
    return [list(column) for column in zip(*rows, strict=True)]


async def get_head(executor: Executor) -> ChainHead | None:
    result = await executor.execute(
        select(_HEAD.c.seq, _HEAD.c.link, _HEAD.c.key_id, _HEAD.c.mac).where(_HEAD.c.id == HEAD_ID)
    )
    row = result.one_or_none()
    if row is None:
        return None
    return ChainHead(
        row.seq, bytes(row.link), row.key_id, None if row.mac is None else bytes(row.mac)
    )


async def walk(executor: Executor, chunk: int = 1000) -> AsyncIterator[ChainedEvent]:
    """Every event in sequence order, fetched a chunk at a time by keyset."""
    after = None
    while True:
        statement = select(_EVENTS).order_by(_EVENTS.c.seq).limit(chunk)
        if after is not None:
            statement = statement.where(_EVENTS.c.seq > after)
        rows = (await executor.execute(statement)).mappings().all()
        for row in rows:
            yield event_from_row(row)
        if len(rows) < chunk:
            return
        after = rows[-1]["seq"]


@dataclass(frozen=True, slots=True)
class EventFilter:
    target: str | None = None
    actor: str | None = None
    provider: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def list_events(
    executor: Executor, where: EventFilter, before_seq: int | None, limit: int
) -> list[ChainedEvent]:
    """Newest first, at most `limit`, only events older than `before_seq` when given."""
    statement = select(_EVENTS).order_by(_EVENTS.c.seq.desc()).limit(limit)
    conditions = {
        _EVENTS.c.target: where.target,
        _EVENTS.c.actor: where.actor,
        _EVENTS.c.provider: where.provider,
        _EVENTS.c.action: where.action,
        _EVENTS.c.outcome: where.outcome,
    }
    for column, value in conditions.items():
        if value is not None:
            statement = statement.where(column == value)
    if where.since is not None:
        statement = statement.where(_EVENTS.c.occurred_at >= where.since)
    if where.until is not None:
        statement = statement.where(_EVENTS.c.occurred_at < where.until)
    if before_seq is not None:
        statement = statement.where(_EVENTS.c.seq < before_seq)
    rows = (await executor.execute(statement)).mappings().all()
    return [event_from_row(row) for row in rows]


# --- Appending on a bare asyncpg connection (the batched PUTs of key_writes.KeyWrites) ---------

_CLAIM_SQL = "UPDATE audit_head SET seq = seq + $1 WHERE id = $2 RETURNING seq, link"
# The events and the head's new link in one statement: a round trip fewer while the head is held.
_INSERT_EVENTS_SQL = f"""
    WITH inserted AS (
        INSERT INTO audit_events ({_EVENT_COLUMNS})
        SELECT * FROM unnest({_EVENT_ARRAYS})
    )
    UPDATE audit_head SET link = $21, key_id = $22, mac = $23 WHERE id = $24
"""


async def append_on_driver(
    connection: asyncpg.Connection, root: RootKey, key: bytes, events: Sequence[AuditEvent]
) -> list[ChainedEvent]:
    """`append` on a Postgres driver connection, in the transaction the caller holds open.

    The same chain and the same head-row lock as `append`, in two statements instead of three.
    """
    row = await connection.fetchrow(_CLAIM_SQL, len(events), HEAD_ID)
    if row is None:
        raise ChainHeadMissingError()
    last_seq, previous = row
    chained = link_events(root, key, bytes(previous), last_seq - len(events) + 1, events)
    tail = chained[-1]
    await connection.execute(
        _INSERT_EVENTS_SQL,
        *_columns(chained),
        tail.link,
        root.key_id,
        head_mac(key, tail.seq, tail.link),
        HEAD_ID,
    )
    return chained
