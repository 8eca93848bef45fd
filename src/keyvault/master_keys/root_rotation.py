"""Root-key rotation: a new random root key in the keyring, wrapped by the seal in use and active at
once, and the removal of old root keys once no record is sealed under them.

The records under the old keys keep opening (the old key stays in the keyring, retired) and are
rewrapped onto the new one afterwards, by master_keys.rotation's rewrap: batch by batch, each a
compare-and-swap, so a PUT in between wins and a rewrap killed at any moment carries on when run
again. A removed root key leaves its audit key behind, wrapped by the seal (and sealed to the
recovery kit): the events it linked stay verifiable, and nothing that opens a record remains.

A retired key is removed only after REMOVAL_GRACE: every instance of the service reloads the
keyring every few seconds, and one that cannot load the new key stops taking writes after half the
grace (master_keys.live_keyring), so no write can still be sealed under a key being removed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.audit.events import Action, audit_key
from keyvault.audit.trail import log_event, record_operation
from keyvault.crypto.keyring import KeyPurpose, UnwrapError
from keyvault.crypto.records import Keyring
from keyvault.db.engine import session_scope
from keyvault.master_keys import keyring_repository, repository
from keyvault.master_keys.keyring import new_sealed_root_key
from keyvault.master_keys.keyring_repository import StoredRootKey
from keyvault.master_keys.seals import EnvSeal, Seal, SealError

Sessions = async_sessionmaker[AsyncSession]

REMOVAL_GRACE = timedelta(minutes=10)

log = logging.getLogger("keyvault")


class RootKeyChangedError(SealError):
    def __init__(self) -> None:
        super().__init__(
            "the active root key changed while this process was rotating it (another process "
            "rotated first); nothing was written"
        )


class StaleSealError(SealError):
    def __init__(self, seal: Seal) -> None:
        super().__init__(
            f"the {seal.describe()} is no longer the one this database's keyring is wrapped by "
            "(another instance rotated the master key or moved to another HSM key); restart "
            "with the current configuration; nothing was written"
        )


async def rotate_root(
    sessions: Sessions, seal: Seal, keyring: Keyring, *, operation: str = "keys rotate-root"
) -> Keyring:
    """Add a new random root key wrapped by `seal` and make it the active key, audited; the
    keyring with it current and every key before it retired."""
    async with session_scope(sessions) as session:
        await repository.lock_keyring(session)
        now = datetime.now(UTC)
        entries = await keyring_repository.list_root_keys(session)
        active = [entry.key_id for entry in entries if entry.active]
        if active != [keyring.current.key_id]:
            raise RootKeyChangedError()
        await check_seal_is_current(session, seal, entries)
        root, wrapped = new_sealed_root_key(seal)
        if not await keyring_repository.retire_active_root_keys(session, active, now):
            raise RootKeyChangedError()
        await keyring_repository.add_root_key(
            session, root.key_id, seal.kind, wrapped, now, material=root.material
        )
        chained = await record_operation(session, root, Action.rotate, operation)
    log_event(chained)
    log.info(
        "root key rotated",
        extra={"event": "root_key_rotated", "key_id": root.key_id, "retired": active[0]},
    )
    return Keyring(
        root,
        (keyring.current, *keyring.previous),
        master_key_ids=keyring.master_key_ids,
        sealed_ids=keyring.sealed_ids | {root.key_id},
    )


async def check_seal_is_current(
    session: AsyncSession, seal: Seal, entries: list[StoredRootKey]
) -> None:
    """StaleSealError unless `seal` still wraps the keyring: under env its master key is the
    active one; the active entry, when `seal` wrapped it, still unwraps with it."""
    if isinstance(seal, EnvSeal) and seal.master_key_id not in await repository.active_key_ids(
        session
    ):
        raise StaleSealError(seal)
    for entry in entries:
        if entry.active and entry.wrapped is not None and entry.seal == seal.kind:
            try:
                seal.unwrap(entry.wrapped)
            except UnwrapError:
                raise StaleSealError(seal) from None


def rotation_due(entries: list[StoredRootKey], every_days: int, now: datetime) -> bool:
    """Whether the active root key is older than the schedule (0 days: never)."""
    if every_days <= 0:
        return False
    active = [entry for entry in entries if entry.active]
    return bool(active) and max(e.created_at for e in active) + timedelta(days=every_days) <= now


def removable(
    entries: list[StoredRootKey], keyring: Keyring, retired_before: datetime
) -> list[str]:
    """The retired root keys retired long enough ago whose key this process holds (so that their
    audit keys can be kept); whether records remain under them is checked as they are removed."""
    return [
        entry.key_id
        for entry in entries
        if entry.retired_at is not None
        and entry.retired_at <= retired_before
        and keyring.root(entry.key_id) is not None
        and entry.key_id != keyring.current.key_id
    ]


async def remove_emptied(
    sessions: Sessions, seal: Seal, keyring: Keyring, *, retired_before: datetime
) -> list[str]:
    """Remove the retired root keys (retired before `retired_before`) no record is sealed under,
    keeping each one's audit key wrapped by `seal`; the ids removed."""
    removed = []
    async with session_scope(sessions) as session:
        await repository.lock_keyring(session)
        await check_seal_is_current(session, seal, await keyring_repository.list_root_keys(session))
        entries = await keyring_repository.list_root_keys(session)
        for key_id in removable(entries, keyring, retired_before):
            root = keyring.root(key_id)
            assert root is not None
            key = audit_key(root)
            wrapped = seal.wrap(key, KeyPurpose.audit)
            copy = await keyring_repository.recovery_copy(session, key_id, KeyPurpose.audit, key)
            if await keyring_repository.keep_only_audit_key(
                session, key_id, seal.kind, wrapped, copy
            ):
                removed.append(key_id)
    for key_id in removed:
        log.info(
            "emptied root key removed; its audit key is kept",
            extra={"event": "root_key_removed", "key_id": key_id},
        )
    return removed


def without(keyring: Keyring, removed: list[str]) -> Keyring:
    """The keyring less the removed root keys."""
    if not removed:
        return keyring
    kept = tuple(key for key in keyring.previous if key.key_id not in removed)
    return Keyring(
        keyring.current,
        kept,
        master_key_ids=keyring.master_key_ids,
        sealed_ids=keyring.sealed_ids - set(removed),
    )
