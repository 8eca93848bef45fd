"""The statements a batch of PUTs runs (RecordWrites): over a session's transaction, or over a
pooled asyncpg connection itself on Postgres, where a batch runs several of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from keyvault.db.models import ApiKeyRecord
from keyvault.keys.repository import (
    STATE_COLUMNS,
    NewRecord,
    RecordState,
    driver_state,
    get_state,
    insert_record_if_absent,
    replace_record_if_current,
    upsert_record,
)

# A key's slot: whose key, for which provider.
Slot = tuple[str, str]


class RecordWrites(Protocol):
    """The statements a PUT runs, over whatever connection its transaction is on."""

    async def upsert(self, record: NewRecord, now: datetime) -> RecordState: ...

    async def insert_if_absent(self, record: NewRecord, now: datetime) -> RecordState | None: ...

    async def upsert_many(
        self, records: Sequence[NewRecord], now: datetime
    ) -> dict[Slot, RecordState]:
        """`upsert` of each record (their slots all different), by (sub, provider)."""
        ...

    async def get_state(self, sub: str, provider: str) -> RecordState | None: ...

    async def replace_if_current(
        self, record: NewRecord, expected: RecordState, now: datetime
    ) -> RecordState | None: ...


class SessionRecordWrites:
    """RecordWrites in a session's transaction (SQLite, and callers that hold a session)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def upsert(self, record: NewRecord, now: datetime) -> RecordState:
        return await upsert_record(self._session, record, now)

    async def upsert_many(
        self, records: Sequence[NewRecord], now: datetime
    ) -> dict[Slot, RecordState]:
        return {
            (record.sub, record.provider): await upsert_record(self._session, record, now)
            for record in records
        }

    async def insert_if_absent(self, record: NewRecord, now: datetime) -> RecordState | None:
        return await insert_record_if_absent(self._session, record, now)

    async def get_state(self, sub: str, provider: str) -> RecordState | None:
        return await get_state(self._session, sub, provider)

    async def replace_if_current(
        self, record: NewRecord, expected: RecordState, now: datetime
    ) -> RecordState | None:
        return await replace_record_if_current(self._session, record, expected, now)


# The same statements for a bare asyncpg connection (see DriverRecordWrites).
_T = ApiKeyRecord.__tablename__
_STATE_SQL = ", ".join(column.key for column in STATE_COLUMNS)
_WRITTEN_SQL = "format_version, key_id, salt, nonce, ciphertext, last4, label, expires_at"
_INSERT_SQL = (
    f"INSERT INTO {_T} (sub, provider, {_WRITTEN_SQL}, version, created_at, updated_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $11)"
)
_ON_CONFLICT_REPLACE = (
    " ON CONFLICT (sub, provider) DO UPDATE SET format_version = excluded.format_version,"
    " key_id = excluded.key_id, salt = excluded.salt, nonce = excluded.nonce,"
    " ciphertext = excluded.ciphertext, last4 = excluded.last4, label = excluded.label,"
    " expires_at = excluded.expires_at,"
    f" updated_at = excluded.updated_at, version = {_T}.version + 1"
)
_UPSERT_SQL = f"{_INSERT_SQL}{_ON_CONFLICT_REPLACE} RETURNING {_STATE_SQL}"
# Rows go in sorted by slot, so two workers' batches lock the rows they share in the same order.
_UPSERT_MANY_SQL = (
    f"INSERT INTO {_T} (sub, provider, {_WRITTEN_SQL}, version, created_at, updated_at)"
    f" SELECT sub, provider, {_WRITTEN_SQL}, 1, $11, $11 FROM unnest($1::text[], $2::text[],"
    " $3::smallint[], $4::text[], $5::bytea[], $6::bytea[], $7::bytea[], $8::text[], $9::text[],"
    f" $10::timestamptz[]) AS v(sub, provider, {_WRITTEN_SQL}) ORDER BY sub, provider"
    f"{_ON_CONFLICT_REPLACE} RETURNING sub, provider, {_STATE_SQL}"
)
_INSERT_IF_ABSENT_SQL = (
    f"{_INSERT_SQL} ON CONFLICT (sub, provider) DO NOTHING RETURNING {_STATE_SQL}"
)
_GET_STATE_SQL = f"SELECT {_STATE_SQL} FROM {_T} WHERE sub = $1 AND provider = $2"
_REPLACE_IF_CURRENT_SQL = (
    f"UPDATE {_T} SET format_version = $3, key_id = $4, salt = $5, nonce = $6, ciphertext = $7,"
    " last4 = $8, label = $9, expires_at = $10, updated_at = $11, version = version + 1"
    " WHERE sub = $1 AND provider = $2 AND version = $12 AND created_at = $13"
    f" RETURNING {_STATE_SQL}"
)


class DriverRecordWrites:
    """RecordWrites on a pooled asyncpg connection itself, in a transaction the caller opened.

    Postgres only: a statement through a session costs several times its own CPU time (see
    repository.RecordReader), and a batch of PUTs runs several of them.
    """

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def upsert(self, record: NewRecord, now: datetime) -> RecordState:
        row = await self._connection.fetchrow(_UPSERT_SQL, *_driver_values(record, now))
        return driver_state(row)

    async def upsert_many(
        self, records: Sequence[NewRecord], now: datetime
    ) -> dict[Slot, RecordState]:
        if len(records) == 1:
            (record,) = records
            return {(record.sub, record.provider): await self.upsert(record, now)}
        columns = list(zip(*(_driver_values(r, now)[:-1] for r in records), strict=True))
        rows = await self._connection.fetch(_UPSERT_MANY_SQL, *map(list, columns), now)
        return {(row[0], row[1]): driver_state(row[2:]) for row in rows}

    async def insert_if_absent(self, record: NewRecord, now: datetime) -> RecordState | None:
        row = await self._connection.fetchrow(_INSERT_IF_ABSENT_SQL, *_driver_values(record, now))
        return None if row is None else driver_state(row)

    async def get_state(self, sub: str, provider: str) -> RecordState | None:
        row = await self._connection.fetchrow(_GET_STATE_SQL, sub, provider)
        return None if row is None else driver_state(row)

    async def replace_if_current(
        self, record: NewRecord, expected: RecordState, now: datetime
    ) -> RecordState | None:
        row = await self._connection.fetchrow(
            _REPLACE_IF_CURRENT_SQL,
            *_driver_values(record, now),
            expected.version,
            expected.created_at,
        )
        return None if row is None else driver_state(row)


def _driver_values(record: NewRecord, now: datetime) -> tuple[Any, ...]:
    """The record's columns in the statements' order ($1 to $11), `now` last."""
    sealed = record.sealed
    return (
        record.sub,
        record.provider,
        sealed.format_version,
        sealed.key_id,
        sealed.salt,
        sealed.nonce,
        sealed.ciphertext,
        record.last4,
        record.label,
        record.expires_at,
        now,
    )
