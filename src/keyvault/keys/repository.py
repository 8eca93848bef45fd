"""Every SQL statement keyvault runs. Functions flush at most; the caller's scope commits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from sqlalchemy import Row, Table, bindparam, delete, func, inspect, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from keyvault.crypto.records import SealedRecord
from keyvault.db.engine import KeptDriverConnections, session_scope
from keyvault.db.models import ApiKeyRecord, Deployment, MasterKeyVerifier

_RECORD_COLUMNS = (
    ApiKeyRecord.format_version,
    ApiKeyRecord.key_id,
    ApiKeyRecord.salt,
    ApiKeyRecord.nonce,
    ApiKeyRecord.ciphertext,
    ApiKeyRecord.last4,
    ApiKeyRecord.version,
    ApiKeyRecord.created_at,
    ApiKeyRecord.updated_at,
)
# Bulk statements here never touch objects already loaded in the session.
_NO_SYNC = {"synchronize_session": False}
_STATE_COLUMNS = (
    ApiKeyRecord.last4,
    ApiKeyRecord.version,
    ApiKeyRecord.created_at,
    ApiKeyRecord.updated_at,
)


@dataclass(frozen=True, slots=True)
class RecordState:
    """What a key's status shows: everything but the sealed bytes."""

    last4: str
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StoredRecord:
    sealed: SealedRecord
    state: RecordState


async def get_deployment(session: AsyncSession) -> Row[tuple[bytes, int]] | None:
    result = await session.execute(select(Deployment.kdf_salt, Deployment.kdf_iterations))
    return result.one_or_none()


async def create_deployment(
    session: AsyncSession, salt: bytes, iterations: int, now: datetime
) -> None:
    session.add(Deployment(id=1, kdf_salt=salt, kdf_iterations=iterations, created_at=now))
    await session.flush()


async def list_verifiers(session: AsyncSession) -> dict[str, bytes]:
    result = await session.execute(select(MasterKeyVerifier.key_id, MasterKeyVerifier.verifier))
    return {key_id: verifier for key_id, verifier in result.tuples()}


async def add_verifier(session: AsyncSession, key_id: str, verifier: bytes, now: datetime) -> None:
    session.add(MasterKeyVerifier(key_id=key_id, verifier=verifier, created_at=now))
    await session.flush()


async def active_key_ids(session: AsyncSession) -> set[str]:
    """Key ids whose verifier is not retired; all of them on a schema from before retirement."""
    connection = await session.connection()
    columns = await connection.run_sync(
        lambda sync: {
            column["name"] for column in inspect(sync).get_columns("master_key_verifiers")
        }
    )
    statement = select(MasterKeyVerifier.key_id)
    if "retired_at" in columns:
        statement = statement.where(MasterKeyVerifier.retired_at.is_(None))
    return set((await session.execute(statement)).scalars())


async def replace_active_verifier(
    session: AsyncSession, replaced_key_id: str, key_id: str, verifier: bytes, now: datetime
) -> bool:
    """Retire the active `replaced_key_id` and make `key_id` the one active key (recorded or revived).

    A compare-and-swap: False, with nothing changed, when `replaced_key_id` is no longer active
    because another process rotated first. The retiring update goes first: it is the statement
    that waits for a concurrent rotator's lock and then sees what that rotator committed.
    """
    connection = await session.connection()
    retired = await connection.execute(
        update(MasterKeyVerifier)
        .where(MasterKeyVerifier.key_id == replaced_key_id, MasterKeyVerifier.retired_at.is_(None))
        .values(retired_at=now)
    )
    if retired.rowcount != 1:
        return False
    insert = _dialect_insert(session)
    await session.execute(
        insert(MasterKeyVerifier)
        .values(key_id=key_id, verifier=verifier, created_at=now, retired_at=None)
        .on_conflict_do_update(index_elements=[MasterKeyVerifier.key_id], set_={"retired_at": None})
    )
    await session.execute(
        update(MasterKeyVerifier)
        .where(MasterKeyVerifier.key_id != key_id, MasterKeyVerifier.retired_at.is_(None))
        .values(retired_at=now),
        execution_options=_NO_SYNC,
    )
    return True


# The read path's one statement, built once over the table's columns: a plain Core select skips
# the ORM's per-execution compile step, and a prebuilt statement skips rebuilding its cache key.
_api_keys = ApiKeyRecord.__table__.c
_GET_RECORD = select(*(_api_keys[column.key] for column in _RECORD_COLUMNS)).where(
    _api_keys.sub == bindparam("sub")
)


# The same statement for a bare asyncpg connection (see RecordReader).
_GET_RECORD_SQL = (
    f"SELECT {', '.join(column.key for column in _RECORD_COLUMNS)}"
    f" FROM {ApiKeyRecord.__tablename__} WHERE sub = $1"
)


async def get_record(session: AsyncSession, sub: str) -> StoredRecord | None:
    row = (await session.execute(_GET_RECORD, {"sub": sub})).one_or_none()
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
        # Two thirds of the pool at most, the rest left for writes and everything else. A third
        # cost more CPU per read under load: with 5 of 15, 32 reads at once waited on the pool
        # itself, and each read cost 17% more (README, Performance).
        self._connections = KeptDriverConnections(engine, pool_size * 2 // 3, pool_timeout)

    async def get_record(self, sub: str) -> StoredRecord | None:
        if not self._direct:
            async with session_scope(self._sessions) as session:
                return await get_record(session, sub)
        async with self._connections.connection() as connection:
            row = await connection.fetchrow(_GET_RECORD_SQL, sub)
        return None if row is None else _stored_record(row)

    async def aclose(self) -> None:
        await self._connections.aclose()


def _stored_record(row: Any) -> StoredRecord:
    sealed = SealedRecord(*row[:5])
    return StoredRecord(sealed, _driver_state(row[5:]))


async def get_state(session: AsyncSession, sub: str) -> RecordState | None:
    result = await session.execute(select(*_STATE_COLUMNS).where(ApiKeyRecord.sub == sub))
    row = result.one_or_none()
    return None if row is None else RecordState(*row)


# Written as SQL because SQLAlchemy cannot cache ON CONFLICT constructs: built with insert()
# it was compiled afresh on every PUT, most of the request's CPU time. Postgres and SQLite (3.35+)
# share this syntax; the bind and result types are the table's, so timestamps and bytes are
# handled exactly as everywhere else.
_UPSERT = (
    text(
        f"INSERT INTO {ApiKeyRecord.__tablename__} (sub, format_version, key_id, salt, nonce,"
        " ciphertext, last4, version, created_at, updated_at)"
        " VALUES (:sub, :format_version, :key_id, :salt, :nonce, :ciphertext, :last4, 1,"
        " :now, :now)"
        " ON CONFLICT (sub) DO UPDATE SET format_version = excluded.format_version,"
        " key_id = excluded.key_id, salt = excluded.salt, nonce = excluded.nonce,"
        " ciphertext = excluded.ciphertext, last4 = excluded.last4,"
        f" updated_at = excluded.updated_at, version = {ApiKeyRecord.__tablename__}.version + 1"
        f" RETURNING {', '.join(column.key for column in _STATE_COLUMNS)}"
    )
    .bindparams(
        *(
            bindparam(name, type_=_api_keys[name].type)
            for name in ("sub", "format_version", "key_id", "salt", "nonce", "ciphertext", "last4")
        ),
        bindparam("now", type_=_api_keys.updated_at.type),
    )
    .columns(*(_api_keys[column.key] for column in _STATE_COLUMNS))
)


async def upsert_record(
    session: AsyncSession, sub: str, sealed: SealedRecord, last4: str, now: datetime
) -> RecordState:
    """Create with version 1, or replace and bump the version, in one atomic statement."""
    values = _sealed_values(sealed, last4, now)
    del values["updated_at"]
    row = (await session.execute(_UPSERT, {"sub": sub, "now": now, **values})).one()
    return RecordState(*row)


async def insert_record_if_absent(
    session: AsyncSession, sub: str, sealed: SealedRecord, last4: str, now: datetime
) -> RecordState | None:
    insert = _dialect_insert(session)
    statement = (
        insert(ApiKeyRecord)
        .values(sub=sub, version=1, created_at=now, **_sealed_values(sealed, last4, now))
        .on_conflict_do_nothing(index_elements=[ApiKeyRecord.sub])
        .returning(*_STATE_COLUMNS)
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else RecordState(*row)


async def replace_record_if_current(
    session: AsyncSession,
    sub: str,
    expected: RecordState | None,
    sealed: SealedRecord,
    last4: str,
    now: datetime,
) -> RecordState | None:
    """Compare-and-swap: replace only while the row is still the one the caller saw.

    `expected=None` means "any existing row". The creation time is compared as well as the version
    so that a delete and re-create (version 1 again) does not pass for the value the caller saw.
    """
    statement = update(ApiKeyRecord).where(ApiKeyRecord.sub == sub)
    if expected is not None:
        statement = statement.where(
            ApiKeyRecord.version == expected.version,
            ApiKeyRecord.created_at == expected.created_at,
        )
    statement = statement.values(
        **_sealed_values(sealed, last4, now), version=ApiKeyRecord.version + 1
    ).returning(*_STATE_COLUMNS)
    row = (await session.execute(statement, execution_options=_NO_SYNC)).one_or_none()
    return None if row is None else RecordState(*row)


async def delete_record(session: AsyncSession, sub: str) -> int | None:
    """The deleted key's version, or None when there was none."""
    result = await session.execute(
        delete(ApiKeyRecord).where(ApiKeyRecord.sub == sub).returning(ApiKeyRecord.version),
        execution_options=_NO_SYNC,
    )
    return result.scalar_one_or_none()


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
_STATE_SQL = ", ".join(column.key for column in _STATE_COLUMNS)
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
    RecordReader), and a batch of PUTs runs several of them.
    """

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def upsert(
        self, sub: str, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState:
        row = await self._connection.fetchrow(_UPSERT_SQL, *_driver_values(sub, sealed, last4, now))
        return _driver_state(row)

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
        return {row[0]: _driver_state(row[1:]) for row in rows}

    async def insert_if_absent(
        self, sub: str, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState | None:
        values = _driver_values(sub, sealed, last4, now)
        row = await self._connection.fetchrow(_INSERT_IF_ABSENT_SQL, *values)
        return None if row is None else _driver_state(row)

    async def get_state(self, sub: str) -> RecordState | None:
        row = await self._connection.fetchrow(_GET_STATE_SQL, sub)
        return None if row is None else _driver_state(row)

    async def replace_if_current(
        self, sub: str, expected: RecordState, sealed: SealedRecord, last4: str, now: datetime
    ) -> RecordState | None:
        row = await self._connection.fetchrow(
            _REPLACE_IF_CURRENT_SQL,
            *_driver_values(sub, sealed, last4, now),
            expected.version,
            expected.created_at,
        )
        return None if row is None else _driver_state(row)


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


def _driver_state(row: Any) -> RecordState:
    """last4, version, created_at, updated_at from an asyncpg row (or a slice of one)."""
    last4, version, created_at, updated_at = row
    # asyncpg already gives aware datetimes; astimezone keeps both paths' values identical (UTC).
    return RecordState(last4, version, created_at.astimezone(UTC), updated_at.astimezone(UTC))


async def count_records_by_key_id(session: AsyncSession) -> dict[str, int]:
    """For the metrics scrape; `key_id` is indexed, so this reads the index, not the records."""
    result = await session.execute(
        select(ApiKeyRecord.key_id, func.count()).group_by(ApiKeyRecord.key_id)
    )
    return {key_id: count for key_id, count in result.tuples()}


def _sealed_values(sealed: SealedRecord, last4: str, now: datetime) -> dict[str, Any]:
    return {
        "format_version": sealed.format_version,
        "key_id": sealed.key_id,
        "salt": sealed.salt,
        "nonce": sealed.nonce,
        "ciphertext": sealed.ciphertext,
        "last4": last4,
        "updated_at": now,
    }


def _dialect_insert(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


# --- Rotation: rewrapping records under the current master key -------------------------------


@dataclass(frozen=True, slots=True)
class RewrapCandidate:
    """A record not sealed under the current key, as it was read (the compare-and-swap's basis)."""

    sub: str
    sealed: SealedRecord
    version: int


@dataclass(frozen=True, slots=True)
class KeyUsage:
    key_id: str
    format_version: int
    records: int


async def records_to_rewrap(
    session: AsyncSession,
    current_key_id: str,
    format_version: int,
    *,
    after: str | None,
    limit: int,
    lock: bool,
) -> list[RewrapCandidate]:
    """The next records (by sub, after `after`) not sealed under the current key and format.

    With `lock`, Postgres locks them for this transaction and skips rows another rotator holds, so
    concurrent rotators share the work; SQLite has no row locks (the clause is not rendered) and
    relies on the compare-and-swap in `swap_sealed`.
    """
    statement = (
        select(
            ApiKeyRecord.sub,
            ApiKeyRecord.format_version,
            ApiKeyRecord.key_id,
            ApiKeyRecord.salt,
            ApiKeyRecord.nonce,
            ApiKeyRecord.ciphertext,
            ApiKeyRecord.version,
        )
        .where(
            or_(
                ApiKeyRecord.key_id != current_key_id,
                ApiKeyRecord.format_version != format_version,
            )
        )
        .order_by(ApiKeyRecord.sub)
        .limit(limit)
    )
    if after is not None:
        statement = statement.where(ApiKeyRecord.sub > after)
    if lock:
        statement = statement.with_for_update(skip_locked=True)
    rows = (await session.execute(statement)).all()
    return [
        RewrapCandidate(
            row.sub,
            SealedRecord(row.format_version, row.key_id, row.salt, row.nonce, row.ciphertext),
            row.version,
        )
        for row in rows
    ]


async def swap_sealed(
    session: AsyncSession, swaps: Sequence[tuple[RewrapCandidate, SealedRecord]]
) -> int:
    """Compare-and-swap each record's sealed bytes; returns how many rows were still as read.

    A rewrap leaves the plaintext, `version` and `updated_at` alone (ETags stay valid), so the
    version alone cannot tell a rewrapped row from an untouched one: the old key id and nonce are
    compared too. A PUT or delete in between changes the version or the nonce, and wins.
    """
    if not swaps:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        return await _swap_sealed_postgres(session, swaps)
    table = ApiKeyRecord.__table__
    assert isinstance(table, Table)
    statement = (
        update(table)
        .where(
            table.c.sub == bindparam("b_sub"),
            table.c.version == bindparam("b_version"),
            table.c.key_id == bindparam("b_old_key_id"),
            table.c.nonce == bindparam("b_old_nonce"),
        )
        .values(
            format_version=bindparam("b_format_version"),
            key_id=bindparam("b_key_id"),
            salt=bindparam("b_salt"),
            nonce=bindparam("b_nonce"),
            ciphertext=bindparam("b_ciphertext"),
        )
    )
    parameters = [
        {
            "b_sub": old.sub,
            "b_version": old.version,
            "b_old_key_id": old.sealed.key_id,
            "b_old_nonce": old.sealed.nonce,
            "b_format_version": new.format_version,
            "b_key_id": new.key_id,
            "b_salt": new.salt,
            "b_nonce": new.nonce,
            "b_ciphertext": new.ciphertext,
        }
        for old, new in swaps
    ]
    connection = await session.connection()
    result = await connection.execute(statement, parameters)
    # sqlite3 sums the rows each execution changed, so this counts the swaps that held.
    return int(result.rowcount)


# One statement for the whole batch: the arrays are unnested side by side into rows.
_SWAP_SEALED_POSTGRES = text(
    """
    UPDATE api_keys AS k
    SET format_version = v.format_version, key_id = v.key_id, salt = v.salt, nonce = v.nonce,
        ciphertext = v.ciphertext
    FROM unnest(
        CAST(:subs AS varchar[]), CAST(:versions AS integer[]), CAST(:old_key_ids AS varchar[]),
        CAST(:old_nonces AS bytea[]), CAST(:format_versions AS smallint[]),
        CAST(:key_ids AS varchar[]), CAST(:salts AS bytea[]), CAST(:nonces AS bytea[]),
        CAST(:ciphertexts AS bytea[])
    ) AS v(sub, version, old_key_id, old_nonce, format_version, key_id, salt, nonce, ciphertext)
    WHERE k.sub = v.sub AND k.version = v.version AND k.key_id = v.old_key_id
      AND k.nonce = v.old_nonce
    RETURNING k.sub
    """
)


async def _swap_sealed_postgres(
    session: AsyncSession, swaps: Sequence[tuple[RewrapCandidate, SealedRecord]]
) -> int:
    parameters = {
        "subs": [old.sub for old, _ in swaps],
        "versions": [old.version for old, _ in swaps],
        "old_key_ids": [old.sealed.key_id for old, _ in swaps],
        "old_nonces": [old.sealed.nonce for old, _ in swaps],
        "format_versions": [new.format_version for _, new in swaps],
        "key_ids": [new.key_id for _, new in swaps],
        "salts": [new.salt for _, new in swaps],
        "nonces": [new.nonce for _, new in swaps],
        "ciphertexts": [new.ciphertext for _, new in swaps],
    }
    result = await session.execute(_SWAP_SEALED_POSTGRES, parameters)
    return len(result.all())


async def count_records_by_key(session: AsyncSession) -> list[KeyUsage]:
    statement = (
        select(ApiKeyRecord.key_id, ApiKeyRecord.format_version, func.count())
        .group_by(ApiKeyRecord.key_id, ApiKeyRecord.format_version)
        .order_by(ApiKeyRecord.key_id, ApiKeyRecord.format_version)
    )
    rows = (await session.execute(statement)).tuples()
    return [KeyUsage(key_id, format_version, count) for key_id, format_version, count in rows]


async def stored_key_ids(session: AsyncSession) -> set[str]:
    """The key ids records are sealed under; a walk of the key-id index, cheap at start-up."""
    result = await session.execute(select(ApiKeyRecord.key_id).distinct())
    return set(result.scalars())


@dataclass(frozen=True, slots=True)
class NewRecord:
    sub: str
    sealed: SealedRecord
    last4: str


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
                "version": 1,
                "created_at": now,
                **_sealed_values(r.sealed, r.last4, now),
            }
            for r in records
        ],
    )


# --- Import from the seed application ---------------------------------------------------------


async def get_records(session: AsyncSession, subs: Sequence[str]) -> dict[str, StoredRecord]:
    statement = select(ApiKeyRecord.sub, *_RECORD_COLUMNS).where(ApiKeyRecord.sub.in_(subs))
    records = {}
    for row in (await session.execute(statement)).all():
        sealed = SealedRecord(row.format_version, row.key_id, row.salt, row.nonce, row.ciphertext)
        state = RecordState(row.last4, row.version, row.created_at, row.updated_at)
        records[row.sub] = StoredRecord(sealed, state)
    return records


async def insert_imported_record(
    session: AsyncSession,
    sub: str,
    sealed: SealedRecord,
    last4: str,
    created_at: datetime,
    updated_at: datetime,
) -> RecordState | None:
    """Insert with the seed's own timestamps; None when a record appeared meanwhile (it is kept)."""
    insert = _dialect_insert(session)
    statement = (
        insert(ApiKeyRecord)
        .values(
            sub=sub,
            version=1,
            created_at=created_at,
            **_sealed_values(sealed, last4, updated_at),
        )
        .on_conflict_do_nothing(index_elements=[ApiKeyRecord.sub])
        .returning(*_STATE_COLUMNS)
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else RecordState(*row)
