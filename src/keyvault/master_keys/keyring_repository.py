"""The keyring's SQL: the root keys, each stored wrapped by its seal, and which one is active; the
audit keys kept for removed root keys; the recovery kit's public key and every entry's recovery
copy. Functions flush at most; the caller's scope commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, exists, func, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keyvault.crypto.keyring import KeyPurpose
from keyvault.crypto.recovery import seal_copy
from keyvault.db.engine import dialect_insert
from keyvault.db.models import ApiKeyRecord, RecoveryKit, RootKeyEntry

# Bulk statements here never touch objects already loaded in the session.
_NO_SYNC = {"synchronize_session": False}
ENV_SEAL = "env"


KIT_ID = 1


@dataclass(frozen=True, slots=True)
class StoredRootKey:
    """One keyring entry as stored; `wrapped` is None for a key derived from a master key."""

    key_id: str
    seal: str
    wrapped: bytes | None = field(repr=False)
    created_at: datetime
    retired_at: datetime | None
    purpose: KeyPurpose = KeyPurpose.root
    recovery_wrapped: bytes | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.retired_at is None

    @property
    def derived(self) -> bool:
        return self.wrapped is None


async def list_root_keys(session: AsyncSession) -> list[StoredRootKey]:
    """The keyring's root keys, oldest entry first."""
    return [e for e in await list_entries(session) if e.purpose == KeyPurpose.root]


async def list_entries(session: AsyncSession) -> list[StoredRootKey]:
    """Every entry, root keys and the audit keys of removed ones, oldest first."""
    statement = select(
        RootKeyEntry.key_id,
        RootKeyEntry.seal,
        RootKeyEntry.wrapped,
        RootKeyEntry.created_at,
        RootKeyEntry.retired_at,
        RootKeyEntry.purpose,
        RootKeyEntry.recovery_wrapped,
    ).order_by(RootKeyEntry.created_at, RootKeyEntry.key_id)
    rows = (await session.execute(statement)).tuples()
    return [
        StoredRootKey(key_id, seal, wrapped, created, retired, KeyPurpose(purpose), recovery)
        for key_id, seal, wrapped, created, retired, purpose, recovery in rows
    ]


async def add_root_key(
    session: AsyncSession,
    key_id: str,
    seal: str,
    wrapped: bytes | None,
    now: datetime,
    *,
    material: bytes,
) -> None:
    """A new active entry, with its recovery copy when there is a kit; the caller retires the
    one it replaces in the same transaction."""
    session.add(
        RootKeyEntry(
            key_id=key_id,
            seal=seal,
            wrapped=wrapped,
            created_at=now,
            retired_at=None,
            purpose=KeyPurpose.root,
            recovery_wrapped=await recovery_copy(session, key_id, KeyPurpose.root, material),
        )
    )
    await session.flush()


async def recovery_copy(
    session: AsyncSession, key_id: str, purpose: KeyPurpose, material: bytes
) -> bytes | None:
    """The entry's copy sealed to the recovery kit's public key; None while there is no kit."""
    public_key = await kit_public_key(session)
    if public_key is None:
        return None
    return seal_copy(public_key, key_id, purpose, material)


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


async def activate_env_root_key(
    session: AsyncSession, key_id: str, now: datetime, *, material: bytes
) -> None:
    """Mirror a master-key rotation: the derived key `key_id` (recorded or revived, even from an
    entry that kept only its audit key) becomes the active entry, every other one is retired."""
    insert = dialect_insert(session)
    copy = await recovery_copy(session, key_id, KeyPurpose.root, material)
    derived = {
        "seal": ENV_SEAL,
        "wrapped": None,
        "retired_at": None,
        "purpose": KeyPurpose.root,
        "recovery_wrapped": copy,
    }
    await session.execute(
        insert(RootKeyEntry)
        .values(key_id=key_id, created_at=now, **derived)
        .on_conflict_do_update(index_elements=[RootKeyEntry.key_id], set_=derived)
    )
    await session.execute(
        update(RootKeyEntry)
        .where(RootKeyEntry.key_id != key_id, RootKeyEntry.retired_at.is_(None))
        .values(retired_at=now),
        execution_options=_NO_SYNC,
    )


async def keep_only_audit_key(
    session: AsyncSession,
    key_id: str,
    seal: str,
    wrapped_audit_key: bytes,
    recovery_wrapped: bytes | None,
) -> bool:
    """Remove the retired root key `key_id` if no record is sealed under it, keeping its audit key
    (wrapped by `seal`) in its place; whether it was removed."""
    connection = await session.connection()
    result = await connection.execute(
        update(RootKeyEntry)
        .where(
            RootKeyEntry.key_id == key_id,
            RootKeyEntry.purpose == KeyPurpose.root,
            RootKeyEntry.retired_at.is_not(None),
            ~exists().where(ApiKeyRecord.key_id == key_id),
        )
        .values(
            purpose=KeyPurpose.audit,
            seal=seal,
            wrapped=wrapped_audit_key,
            recovery_wrapped=recovery_wrapped,
        )
    )
    return bool(result.rowcount == 1)


async def delete_unused_root_key(session: AsyncSession, key_id: str) -> bool:
    """Delete the retired root key `key_id` outright if no record is sealed under it (for a key
    no audit event was linked under); whether it was deleted."""
    connection = await session.connection()
    result = await connection.execute(
        delete(RootKeyEntry).where(
            RootKeyEntry.key_id == key_id,
            RootKeyEntry.purpose == KeyPurpose.root,
            RootKeyEntry.retired_at.is_not(None),
            ~exists().where(ApiKeyRecord.key_id == key_id),
        )
    )
    return bool(result.rowcount == 1)


async def set_wrapped(
    session: AsyncSession, key_id: str, seal: str, wrapped: bytes, recovery_wrapped: bytes | None
) -> None:
    """Store an entry wrapped anew (another wrapping key, or a derived key now kept wrapped)."""
    await session.execute(
        update(RootKeyEntry)
        .where(RootKeyEntry.key_id == key_id)
        .values(seal=seal, wrapped=wrapped, recovery_wrapped=recovery_wrapped),
        execution_options=_NO_SYNC,
    )


async def kit_public_key(session: AsyncSession) -> bytes | None:
    statement = select(RecoveryKit.public_key).where(RecoveryKit.id == KIT_ID)
    return (await session.execute(statement)).scalar_one_or_none()


async def get_kit(session: AsyncSession) -> RecoveryKit | None:
    return await session.get(RecoveryKit, KIT_ID)


async def replace_kit(
    session: AsyncSession,
    public_key: bytes,
    shares: int,
    threshold: int,
    copies: dict[str, bytes],
    now: datetime,
) -> None:
    """The new kit and every entry's copy under it, in one transaction: the old kit's shares open
    nothing from then on."""
    await session.execute(delete(RecoveryKit), execution_options=_NO_SYNC)
    session.add(
        RecoveryKit(
            id=KIT_ID, public_key=public_key, shares=shares, threshold=threshold, created_at=now
        )
    )
    await session.flush()
    for key_id, copy in copies.items():
        await session.execute(
            update(RootKeyEntry).where(RootKeyEntry.key_id == key_id).values(recovery_wrapped=copy),
            execution_options=_NO_SYNC,
        )


async def has_keyring(session: AsyncSession) -> bool:
    """False on a schema from before the keyring (a database `keyvault migrate` has yet to see)."""
    connection = await session.connection()
    return await connection.run_sync(lambda sync: inspect(sync).has_table("root_keys"))


async def active_seal(session: AsyncSession) -> str | None:
    """The seal of the active entry; None on a new database or a schema before the keyring."""
    if not await has_keyring(session):
        return None
    statement = (
        select(RootKeyEntry.seal)
        .where(RootKeyEntry.retired_at.is_(None), RootKeyEntry.purpose == KeyPurpose.root)
        .limit(1)
    )
    return (await session.execute(statement)).scalar_one_or_none()
