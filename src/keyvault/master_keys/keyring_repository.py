"""The keyring's SQL: the root keys, each stored wrapped by its seal, and which one is active.
Functions flush at most; the caller's scope commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, exists, func, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyvault.db.engine import dialect_insert
from keyvault.db.models import ApiKeyRecord, RootKeyEntry

# Bulk statements here never touch objects already loaded in the session.
_NO_SYNC = {"synchronize_session": False}
ENV_SEAL = "env"


@dataclass(frozen=True, slots=True)
class StoredRootKey:
    """One keyring entry as stored; `wrapped` is None for a key derived from a master key."""

    key_id: str
    seal: str
    wrapped: bytes | None = field(repr=False)
    created_at: datetime
    retired_at: datetime | None

    @property
    def active(self) -> bool:
        return self.retired_at is None

    @property
    def derived(self) -> bool:
        return self.wrapped is None


async def list_root_keys(session: AsyncSession) -> list[StoredRootKey]:
    """The keyring, oldest entry first."""
    statement = select(
        RootKeyEntry.key_id,
        RootKeyEntry.seal,
        RootKeyEntry.wrapped,
        RootKeyEntry.created_at,
        RootKeyEntry.retired_at,
    ).order_by(RootKeyEntry.created_at, RootKeyEntry.key_id)
    rows = (await session.execute(statement)).tuples()
    return [StoredRootKey(*row) for row in rows]


async def add_root_key(
    session: AsyncSession, key_id: str, seal: str, wrapped: bytes | None, now: datetime
) -> None:
    """A new active entry; the caller retires the one it replaces in the same transaction."""
    session.add(
        RootKeyEntry(key_id=key_id, seal=seal, wrapped=wrapped, created_at=now, retired_at=None)
    )
    await session.flush()


async def retire_active_root_keys(
    session: AsyncSession, expected: Sequence[str], now: datetime
) -> bool:
    """Retire the active entries, which must be exactly `expected`: a compare-and-swap.

    False, with nothing changed that the caller keeps (it rolls back), when another process
    replaced one of them first: that process's update holds the row (Postgres) or the single
    writer's lock (SQLite) until it commits, and `retired_at IS NULL` then no longer matches here.
    """
    connection = await session.connection()
    result = await connection.execute(
        update(RootKeyEntry)
        .where(RootKeyEntry.key_id.in_(expected), RootKeyEntry.retired_at.is_(None))
        .values(retired_at=now)
    )
    if result.rowcount != len(expected):
        return False
    still_active = await session.execute(
        select(func.count()).where(RootKeyEntry.retired_at.is_(None))
    )
    return still_active.scalar_one() == 0


async def activate_env_root_key(session: AsyncSession, key_id: str, now: datetime) -> None:
    """Mirror a master-key rotation: the derived key `key_id` (recorded or revived) becomes the
    active entry, every other one is retired."""
    insert = dialect_insert(session)
    await session.execute(
        insert(RootKeyEntry)
        .values(key_id=key_id, seal=ENV_SEAL, wrapped=None, created_at=now, retired_at=None)
        .on_conflict_do_update(index_elements=[RootKeyEntry.key_id], set_={"retired_at": None})
    )
    await session.execute(
        update(RootKeyEntry)
        .where(RootKeyEntry.key_id != key_id, RootKeyEntry.retired_at.is_(None))
        .values(retired_at=now),
        execution_options=_NO_SYNC,
    )


async def remove_unused_root_keys(session: AsyncSession, key_ids: Sequence[str]) -> list[str]:
    """Delete the retired entries among `key_ids` that no record is sealed under; their ids."""
    unused = (
        RootKeyEntry.key_id.in_(key_ids),
        RootKeyEntry.retired_at.is_not(None),
        ~exists().where(ApiKeyRecord.key_id == RootKeyEntry.key_id),
    )
    doomed = list((await session.execute(select(RootKeyEntry.key_id).where(*unused))).scalars())
    if doomed:
        await session.execute(
            delete(RootKeyEntry).where(RootKeyEntry.key_id.in_(doomed), *unused[1:]),
            execution_options=_NO_SYNC,
        )
    return sorted(doomed)


async def has_keyring(session: AsyncSession) -> bool:
    """False on a schema from before the keyring (a database `keyvault migrate` has yet to see)."""
    connection = await session.connection()
    return await connection.run_sync(lambda sync: inspect(sync).has_table("root_keys"))


async def active_seal(session: AsyncSession) -> str | None:
    """The seal of the active entry; None on a new database or a schema before the keyring."""
    if not await has_keyring(session):
        return None
    statement = select(RootKeyEntry.seal).where(RootKeyEntry.retired_at.is_(None)).limit(1)
    return (await session.execute(statement)).scalar_one_or_none()
