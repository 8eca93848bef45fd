"""The key records' SQL: read, list, write, delete and count `api_keys` rows, one per user per
provider, and RecordReader, the read path's kept-connection reader. Functions flush at most; the
caller's scope commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from keyvault.crypto.records import SealedRecord
from keyvault.db.engine import KeptDriverConnections, dialect_insert, session_scope
from keyvault.db.models import ApiKeyRecord

STATE_COLUMNS = (
    ApiKeyRecord.last4,
    ApiKeyRecord.version,
    ApiKeyRecord.created_at,
    ApiKeyRecord.updated_at,
    ApiKeyRecord.label,
    ApiKeyRecord.expires_at,
)
_SEALED_COLUMNS = (
    ApiKeyRecord.format_version,
    ApiKeyRecord.key_id,
    ApiKeyRecord.salt,
    ApiKeyRecord.nonce,
    ApiKeyRecord.ciphertext,
)
_RECORD_COLUMNS = (*_SEALED_COLUMNS, *STATE_COLUMNS)
# Bulk statements here never touch objects already loaded in the session.
_NO_SYNC = {"synchronize_session": False}


@dataclass(frozen=True, slots=True)
class RecordState:
    """What a key's status shows: everything but the sealed bytes."""

    last4: str
    version: int
    created_at: datetime
    updated_at: datetime
    label: str | None = None
    expires_at: datetime | None = None

    def expired_at(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True, slots=True)
class StoredRecord:
    sealed: SealedRecord
    state: RecordState


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to write: whose key for which provider, sealed, with what the status shows."""

    sub: str
    provider: str
    sealed: SealedRecord
    last4: str
    label: str | None = None
    expires_at: datetime | None = None


# The read path's one statement, built once over the table's columns: a plain Core select skips
# the ORM's per-execution compile step, and a prebuilt statement skips rebuilding its cache key.
_api_keys = ApiKeyRecord.__table__.c
_GET_RECORD = select(*(_api_keys[column.key] for column in _RECORD_COLUMNS)).where(
    _api_keys.sub == bindparam("sub"), _api_keys.provider == bindparam("provider")
)


# The same statement for a bare asyncpg connection (see RecordReader): one primary-key lookup.
_GET_RECORD_SQL = (
    f"SELECT {', '.join(column.key for column in _RECORD_COLUMNS)}"
    f" FROM {ApiKeyRecord.__tablename__} WHERE sub = $1 AND provider = $2"
)


async def get_record(session: AsyncSession, sub: str, provider: str) -> StoredRecord | None:
    row = (await session.execute(_GET_RECORD, {"sub": sub, "provider": provider})).one_or_none()
    return None if row is None else _stored_record(row)


class RecordReader:
    """The read path's access to records: one SELECT, on a connection held only for it.

    On Postgres it runs on a pooled asyncpg connection itself (see db.KeptDriverConnections): going
    through a session costs several times the query's own CPU time. Elsewhere it is get_record
    in a session of its own. One statement sees one consistent snapshot either way.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        pool_size: int,
        pool_timeout: float,
    ) -> None:
        self._sessions = sessions
        self._direct = engine.dialect.name == "postgresql"
        # Two thirds of the pool at most, the rest left for writes and everything else. With only
        # a third kept, concurrent reads queue on the kept connections themselves and each read
        # costs more CPU under load.
        self._connections = KeptDriverConnections(engine, pool_size * 2 // 3, pool_timeout)

    async def get_record(self, sub: str, provider: str) -> StoredRecord | None:
        if not self._direct:
            async with session_scope(self._sessions) as session:
                return await get_record(session, sub, provider)
        async with self._connections.connection() as connection:
            row = await connection.fetchrow(_GET_RECORD_SQL, sub, provider)
        return None if row is None else _stored_record(row)

    async def aclose(self) -> None:
        await self._connections.aclose()


def _stored_record(row: Any) -> StoredRecord:
    sealed = SealedRecord(*row[:5])
    return StoredRecord(sealed, driver_state(row[5:]))


def driver_state(row: Any) -> RecordState:
    """last4, version, created_at, updated_at, label, expires_at from an asyncpg row (or a slice
    of one)."""
    last4, version, created_at, updated_at, label, expires_at = row
    # asyncpg already gives aware datetimes; astimezone keeps both paths' values identical (UTC).
    return RecordState(
        last4,
        version,
        created_at.astimezone(UTC),
        updated_at.astimezone(UTC),
        label,
        None if expires_at is None else expires_at.astimezone(UTC),
    )


async def get_state(session: AsyncSession, sub: str, provider: str) -> RecordState | None:
    result = await session.execute(
        select(*STATE_COLUMNS).where(ApiKeyRecord.sub == sub, ApiKeyRecord.provider == provider)
    )
    row = result.one_or_none()
    return None if row is None else RecordState(*row)


async def list_states(session: AsyncSession, sub: str) -> list[tuple[str, RecordState]]:
    """Every key of the user, by provider name: a range of the primary key's index."""
    result = await session.execute(
        select(ApiKeyRecord.provider, *STATE_COLUMNS)
        .where(ApiKeyRecord.sub == sub)
        .order_by(ApiKeyRecord.provider)
    )
    return [(row[0], RecordState(*row[1:])) for row in result.all()]


async def get_records(
    session: AsyncSession, subs: Sequence[str], provider: str
) -> dict[str, StoredRecord]:
    """The given users' keys for one provider, by sub."""
    statement = select(ApiKeyRecord.sub, *_RECORD_COLUMNS).where(
        ApiKeyRecord.sub.in_(subs), ApiKeyRecord.provider == provider
    )
    return {row[0]: _stored_record(row[1:]) for row in (await session.execute(statement)).all()}


# Written as SQL because SQLAlchemy cannot cache ON CONFLICT constructs: built with insert() it
# would be compiled afresh on every PUT, most of the request's CPU time. Postgres and SQLite (3.35+)
# share this syntax; the bind and result types are the table's, so timestamps and bytes are
# handled exactly as everywhere else.
_WRITTEN = (
    "format_version",
    "key_id",
    "salt",
    "nonce",
    "ciphertext",
    "last4",
    "label",
    "expires_at",
)
_UPSERT = (
    text(
        f"INSERT INTO {ApiKeyRecord.__tablename__} (sub, provider, {', '.join(_WRITTEN)},"
        " version, created_at, updated_at)"
        f" VALUES (:sub, :provider, {', '.join(':' + name for name in _WRITTEN)}, 1, :now, :now)"
        " ON CONFLICT (sub, provider) DO UPDATE SET "
        + ", ".join(f"{name} = excluded.{name}" for name in _WRITTEN)
        + ", updated_at = excluded.updated_at,"
        f" version = {ApiKeyRecord.__tablename__}.version + 1"
        f" RETURNING {', '.join(column.key for column in STATE_COLUMNS)}"
    )
    .bindparams(
        *(bindparam(name, type_=_api_keys[name].type) for name in ("sub", "provider", *_WRITTEN)),
        bindparam("now", type_=_api_keys.updated_at.type),
    )
    .columns(*(_api_keys[column.key] for column in STATE_COLUMNS))
)


async def upsert_record(session: AsyncSession, record: NewRecord, now: datetime) -> RecordState:
    """Create with version 1, or replace and bump the version, in one atomic statement."""
    values = _written_values(record, now)
    del values["updated_at"]
    parameters = {"sub": record.sub, "provider": record.provider, "now": now, **values}
    row = (await session.execute(_UPSERT, parameters)).one()
    return RecordState(*row)


async def insert_record_if_absent(
    session: AsyncSession, record: NewRecord, now: datetime
) -> RecordState | None:
    return await insert_imported_record(session, record, now, now)


async def insert_imported_record(
    session: AsyncSession, record: NewRecord, created_at: datetime, updated_at: datetime
) -> RecordState | None:
    """Insert as version 1 with the given timestamps (the seed's own, for an import); None when
    a record appeared meanwhile (it is kept)."""
    insert = dialect_insert(session)
    statement = (
        insert(ApiKeyRecord)
        .values(
            sub=record.sub,
            provider=record.provider,
            version=1,
            created_at=created_at,
            **_written_values(record, updated_at),
        )
        .on_conflict_do_nothing(index_elements=[ApiKeyRecord.sub, ApiKeyRecord.provider])
        .returning(*STATE_COLUMNS)
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else RecordState(*row)


async def insert_records(
    session: AsyncSession, records: Sequence[NewRecord], now: datetime
) -> None:
    """Bulk-insert new records (version 1) in one executemany; for seeding benchmarks and tests."""
    if not records:
        return
    table = ApiKeyRecord.__table__
    assert isinstance(table, Table)
    connection = await session.connection()
    await connection.execute(
        table.insert(),
        [
            {
                "sub": r.sub,
                "provider": r.provider,
                "version": 1,
                "created_at": now,
                **_written_values(r, now),
            }
            for r in records
        ],
    )


async def replace_record_if_current(
    session: AsyncSession, record: NewRecord, expected: RecordState | None, now: datetime
) -> RecordState | None:
    """Compare-and-swap: replace only while the row is still the one the caller saw.

    `expected=None` means "any existing row". The creation time is compared as well as the version
    so that a delete and re-create (version 1 again) does not pass for the value the caller saw.
    """
    statement = update(ApiKeyRecord).where(
        ApiKeyRecord.sub == record.sub, ApiKeyRecord.provider == record.provider
    )
    if expected is not None:
        statement = statement.where(
            ApiKeyRecord.version == expected.version,
            ApiKeyRecord.created_at == expected.created_at,
        )
    statement = statement.values(
        **_written_values(record, now), version=ApiKeyRecord.version + 1
    ).returning(*STATE_COLUMNS)
    row = (await session.execute(statement, execution_options=_NO_SYNC)).one_or_none()
    return None if row is None else RecordState(*row)


async def delete_record(session: AsyncSession, sub: str, provider: str) -> int | None:
    """The deleted key's version, or None when there was none."""
    result = await session.execute(
        delete(ApiKeyRecord)
        .where(ApiKeyRecord.sub == sub, ApiKeyRecord.provider == provider)
        .returning(ApiKeyRecord.version),
        execution_options=_NO_SYNC,
    )
    return result.scalar_one_or_none()


async def count_records_by_key_id(session: AsyncSession) -> dict[str, int]:
    """For the metrics scrape; `key_id` is indexed, so this reads the index, not the records."""
    result = await session.execute(
        select(ApiKeyRecord.key_id, func.count()).group_by(ApiKeyRecord.key_id)
    )
    return {key_id: count for key_id, count in result.tuples()}


def _written_values(record: NewRecord, now: datetime) -> dict[str, Any]:
    return {
        "format_version": record.sealed.format_version,
        "key_id": record.sealed.key_id,
        "salt": record.sealed.salt,
        "nonce": record.sealed.nonce,
        "ciphertext": record.sealed.ciphertext,
        "last4": record.last4,
        "label": record.label,
        "expires_at": record.expires_at,
        "updated_at": now,
    }
