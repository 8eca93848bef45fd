"""The master keys' SQL: the deployment's KDF parameters, the verifiers (which key ids are known and
which one is active), and rotation's queries over the records sealed under each key id.
Functions flush at most; the caller's scope commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row, Table, bindparam, func, inspect, or_, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyvault.crypto.records import SealedRecord
from keyvault.db.engine import dialect_insert
from keyvault.db.models import ApiKeyRecord, Deployment, MasterKeyVerifier

# Bulk statements here never touch objects already loaded in the session.
_NO_SYNC = {"synchronize_session": False}


async def get_deployment(session: AsyncSession) -> Row[tuple[bytes, int]] | None:
    result = await session.execute(select(Deployment.kdf_salt, Deployment.kdf_iterations))
    return result.one_or_none()


async def create_deployment(
    session: AsyncSession, salt: bytes, iterations: int, now: datetime
) -> None:
    session.add(Deployment(id=1, kdf_salt=salt, kdf_iterations=iterations, created_at=now))
    await session.flush()


async def lock_deployment(
    session: AsyncSession, salt: bytes, iterations: int, now: datetime
) -> None:
    """Create the deployment row if there is none, and hold it locked until the transaction ends:
    processes adding a seal's first root key go one at a time, each seeing what the last one
    committed (SQLite's single writer does the same for the insert)."""
    insert = dialect_insert(session)
    await session.execute(
        insert(Deployment)
        .values(id=1, kdf_salt=salt, kdf_iterations=iterations, created_at=now)
        .on_conflict_do_nothing(index_elements=[Deployment.id])
    )
    await session.execute(select(Deployment.id).with_for_update())


async def list_verifiers(session: AsyncSession) -> dict[str, bytes]:
    result = await session.execute(select(MasterKeyVerifier.key_id, MasterKeyVerifier.verifier))
    return {key_id: verifier for key_id, verifier in result.tuples()}


async def add_verifier(session: AsyncSession, key_id: str, verifier: bytes, now: datetime) -> None:
    session.add(MasterKeyVerifier(key_id=key_id, verifier=verifier, created_at=now))
    await session.flush()


async def active_key_ids(session: AsyncSession) -> set[str]:
    """Key ids whose verifier is not retired; all of them on a schema without `retired_at`."""
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
    insert = dialect_insert(session)
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


# --- Rotation: rewrapping records under the current master key -------------------------------


@dataclass(frozen=True, slots=True)
class RewrapCandidate:
    """A record not sealed under the current key, as it was read (the compare-and-swap's basis)."""

    sub: str
    provider: str
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
    after: tuple[str, str] | None,
    limit: int,
    lock: bool,
) -> list[RewrapCandidate]:
    """The next records (by sub and provider, after `after`) not sealed under the current key and
    format: every provider's keys, in primary-key order.

    With `lock`, Postgres locks them for this transaction and skips rows another rotator holds, so
    concurrent rotators share the work; SQLite has no row locks (the clause is not rendered) and
    relies on the compare-and-swap in `swap_sealed`.
    """
    statement = (
        select(
            ApiKeyRecord.sub,
            ApiKeyRecord.provider,
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
        .order_by(ApiKeyRecord.sub, ApiKeyRecord.provider)
        .limit(limit)
    )
    if after is not None:
        statement = statement.where(tuple_(ApiKeyRecord.sub, ApiKeyRecord.provider) > after)
    if lock:
        statement = statement.with_for_update(skip_locked=True)
    rows = (await session.execute(statement)).all()
    return [
        RewrapCandidate(
            row.sub,
            row.provider,
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
            table.c.provider == bindparam("b_provider"),
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
            "b_provider": old.provider,
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
        CAST(:subs AS varchar[]), CAST(:providers AS varchar[]), CAST(:versions AS integer[]),
        CAST(:old_key_ids AS varchar[]), CAST(:old_nonces AS bytea[]),
        CAST(:format_versions AS smallint[]), CAST(:key_ids AS varchar[]),
        CAST(:salts AS bytea[]), CAST(:nonces AS bytea[]), CAST(:ciphertexts AS bytea[])
    ) AS v(sub, provider, version, old_key_id, old_nonce, format_version, key_id, salt, nonce,
           ciphertext)
    WHERE k.sub = v.sub AND k.provider = v.provider AND k.version = v.version
      AND k.key_id = v.old_key_id AND k.nonce = v.old_nonce
    RETURNING k.sub
    """
)


async def _swap_sealed_postgres(
    session: AsyncSession, swaps: Sequence[tuple[RewrapCandidate, SealedRecord]]
) -> int:
    parameters = {
        "subs": [old.sub for old, _ in swaps],
        "providers": [old.provider for old, _ in swaps],
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


async def any_record_under(session: AsyncSession, key_ids: Sequence[str]) -> bool:
    """Whether some record is sealed under one of `key_ids`: a probe of the key-id index."""
    if not key_ids:
        return False
    statement = select(ApiKeyRecord.key_id).where(ApiKeyRecord.key_id.in_(key_ids)).limit(1)
    return (await session.execute(statement)).first() is not None


async def make_only_active_verifier(
    session: AsyncSession, key_id: str, verifier: bytes, now: datetime
) -> None:
    """Record `key_id` as the one active master key (new or revived), every other retired: what a
    recovery does, when the master key it replaces is lost."""
    insert = dialect_insert(session)
    await session.execute(
        insert(MasterKeyVerifier)
        .values(key_id=key_id, verifier=verifier, created_at=now, retired_at=None)
        .on_conflict_do_update(
            index_elements=[MasterKeyVerifier.key_id],
            set_={"retired_at": None},
        )
    )
    await session.execute(
        update(MasterKeyVerifier)
        .where(MasterKeyVerifier.key_id != key_id, MasterKeyVerifier.retired_at.is_(None))
        .values(retired_at=now),
        execution_options=_NO_SYNC,
    )


async def lock_keyring(session: AsyncSession) -> None:
    """Hold the deployment row until the transaction ends: every change to the keyring (a
    rotation, a rewrap under a new wrapping key, a removal, a kit, a recovery) takes it first, so
    none of them works from entries another is changing. An UPDATE rather than FOR UPDATE: on
    SQLite it is the statement that opens the transaction and takes the single writer's lock."""
    await session.execute(
        update(Deployment).where(Deployment.id == 1).values(id=Deployment.id),
        execution_options=_NO_SYNC,
    )
