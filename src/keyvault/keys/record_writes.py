"""The statements a batch of PUTs runs (RecordWrites): over a session's transaction, or over a
pooled asyncpg connection itself on Postgres, where a batch runs several of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from keyvault.crypto.records import SealedRecord
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


class RecordWrites(Protocol):
    """The statements a PUT runs, over whatever connection its transaction is on."""

    async def upsert(
        self, sub: str, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState: ...

    async def insert_if_absent(
        self, sub: str, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState | None: ...

    async def upsert_many(
        self, records: Sequence[NewRecord], now: datetime
    ) -> dict[str, RecordState]:
        """`upsert` of each record (their subs all different), by sub."""
        ...

    async def get_state(self, sub: str) -> RecordState | None: ...

    async def replace_if_current(
        self, sub: str, expected: RecordState, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState | None: ...


class SessionRecordWrites:
    """RecordWrites in a session's transaction (SQLite, and callers that hold a session)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def upsert(
        self, sub: str, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState:
        return await upsert_record(self._session, sub, sealed, last4, now)

    async def upsert_many(
        self, records: Sequence[NewRecord], now: datetime
    ) -> dict[str, RecordState]:
        return {
            record.sub: await upsert_record(
                self._session, record.sub, record.sealed, record.last4, now
            )
            for record in records
        }

    async def insert_if_absent(
        self, sub: str, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState | None:
        return await insert_record_if_absent(self._session, sub, sealed, last4, now)

    async def get_state(self, sub: str) -> RecordState | None:
        return await get_state(self._session, sub)

    async def replace_if_current(
        self, sub: str, expected: RecordState, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState | None:
        return await replace_record_if_current(self._session, sub, expected, sealed, last4, now)


# The same statements for a bare asyncpg connection (see DriverRecordWrites).
_T = ApiKeyRecord.__tablename__
_STATE_SQL = ", ".join(column.key for column in STATE_COLUMNS)
_SEALED_SQL = "format_version, key_id, salt, nonce, ciphertext, last4"
_INSERT_SQL = (
    f"INSERT INTO {_T} (sub, {_SEALED_SQL}, version, created_at, updated_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $8)"
)
_ON_CONFLICT_REPLACE = (
    " ON CONFLICT (sub) DO UPDATE SET format_version = excluded.format_version,"
    " key_id = excluded.key_id, salt = excluded.salt, nonce = excluded.nonce,"
    " ciphertext = excluded.ciphertext, last4 = excluded.last4,"
    f" updated_at = excluded.updated_at, version = {_T}.version + 1"
)
_UPSERT_SQL = f"{_INSERT_SQL}{_ON_CONFLICT_REPLACE} RETURNING {_STATE_SQL}"
# Rows go in sorted by sub, so two workers' batches lock the rows they share in the same order.
_UPSERT_MANY_SQL = (
    f"INSERT INTO {_T} (sub, {_SEALED_SQL}, version, created_at, updated_at)"
    f" SELECT sub, {_SEALED_SQL}, 1, $8, $8 FROM unnest($1::text[], $2::smallint[], $3::text[],"
    f" $4::bytea[], $5::bytea[], $6::bytea[], $7::text[]) AS v(sub, {_SEALED_SQL}) ORDER BY sub"
    f"{_ON_CONFLICT_REPLACE} RETURNING sub, {_STATE_SQL}"
)
_INSERT_IF_ABSENT_SQL = f"{_INSERT_SQL} ON CONFLICT (sub) DO NOTHING RETURNING {_STATE_SQL}"
_GET_STATE_SQL = f"SELECT {_STATE_SQL} FROM {_T} WHERE sub = $1"
_REPLACE_IF_CURRENT_SQL = (
    f"UPDATE {_T} SET format_version = $2, key_id = $3, salt = $4, nonce = $5, ciphertext = $6,"
    " last4 = $7, updated_at = $8, version = version + 1"
    f" WHERE sub = $1 AND version = $9 AND created_at = $10 RETURNING {_STATE_SQL}"
)


class DriverRecordWrites:
    """RecordWrites on a pooled asyncpg connection itself, in a transaction the caller opened.

    Postgres only: a statement through a session costs several times its own CPU time (see
    repository.RecordReader), and a batch of PUTs runs several of them.
    """

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def upsert(
        self, sub: str, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState:
        row = await self._connection.fetchrow(_UPSERT_SQL, *_driver_values(sub, sealed, last4, now))
        return driver_state(row)

    async def upsert_many(
        self, records: Sequence[NewRecord], now: datetime
    ) -> dict[str, RecordState]:
        if len(records) == 1:
            (record,) = records
            return {record.sub: await self.upsert(record.sub, record.sealed, record.last4, now)}
        rows = await self._connection.fetch(
            _UPSERT_MANY_SQL,
            [r.sub for r in records],
            [r.sealed.format_version for r in records],
            [r.sealed.key_id for r in records],
            [r.sealed.salt for r in records],
            [r.sealed.nonce for r in records],
            [r.sealed.ciphertext for r in records],
            [r.last4 for r in records],
            now,
        )
        return {row[0]: driver_state(row[1:]) for row in rows}

    async def insert_if_absent(
        self, sub: str, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState | None:
        values = _driver_values(sub, sealed, last4, now)
        row = await self._connection.fetchrow(_INSERT_IF_ABSENT_SQL, *values)
        return None if row is None else driver_state(row)

    async def get_state(self, sub: str) -> RecordState | None:
        row = await self._connection.fetchrow(_GET_STATE_SQL, sub)
        return None if row is None else driver_state(row)

    async def replace_if_current(
        self, sub: str, expected: RecordState, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState | None:
        row = await self._connection.fetchrow(
            _REPLACE_IF_CURRENT_SQL,
            *_driver_values(sub, sealed, last4, now),
            expected.version,
            expected.created_at,
        )
        return None if row is None else driver_state(row)


def _driver_values(sub: str, sealed: SealedRecord, last4: str, now: datetime) -> tuple[Any, ...]:
    return (
        sub,
        sealed.format_version,
        sealed.key_id,
        sealed.salt,
        sealed.nonce,
        sealed.ciphertext,
        last4,
        now,
    )
