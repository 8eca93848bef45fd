"""Unlocking the deployment: derive the root key once and prove it is the one the data was sealed with."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault import repository
from keyvault.crypto import Keyring, RootKey, new_deployment_salt
from keyvault.db import session_scope


class MasterKeyMismatchError(Exception):
    def __init__(
        self,
        message: str = "the master key does not match the one this database was created with; "
        "nothing was written",
    ) -> None:
        super().__init__(message)


class UnknownPreviousKeyError(MasterKeyMismatchError):
    """A retired key this deployment never used: most likely a typo that would hide real records."""

    def __init__(self, position: int) -> None:
        super().__init__(
            f"previous master key #{position} was never a master key of this database; "
            "nothing was written"
        )


async def unlock(
    sessions: async_sessionmaker[AsyncSession],
    master_key: str,
    *,
    iterations_for_new: int,
    previous: tuple[str, ...] = (),
) -> Keyring:
    """The keyring for this deployment, creating its salt and verifier on first use.

    One key is active: the one whose verifier is not retired. Any other current key is accepted
    only as a deliberate rotation, i.e. with at least one `previous` key configured; every previous
    key must match a verifier. The new key then becomes the active one (its verifier recorded, the
    others retired), so later starts accept it alone and refuse the retired key alone.

    Two processes starting on an empty database (or rotating at once) race to insert the same row;
    the loser's insert fails on the primary key and it simply reads what the winner wrote.
    """
    try:
        return await _unlock_once(sessions, master_key, iterations_for_new, previous)
    except IntegrityError:
        return await _unlock_once(sessions, master_key, iterations_for_new, previous)


async def check_before_migration(
    sessions: async_sessionmaker[AsyncSession], master_key: str, previous: tuple[str, ...] = ()
) -> None:
    """Refuse a master key this database does not know, before any migration runs; write nothing.

    It reads only what the first schema revision already had (the deployment row and the
    verifiers), so it works on a database of any age; `unlock` after the upgrade applies the
    full rules (retired keys, rotation).
    """
    async with sessions() as session:
        deployment = await repository.get_deployment(session)
        if deployment is None:
            return
        verifiers = await repository.list_verifiers(session)
    roots = await derive_all(
        (master_key, *previous), deployment.kdf_salt, deployment.kdf_iterations
    )
    if not any(root.matches(verifiers.get(root.key_id, b"")) for root in roots):
        raise MasterKeyMismatchError()


async def derive_all(
    master_keys: tuple[str, ...], salt: bytes, iterations: int
) -> tuple[RootKey, ...]:
    """PBKDF2 releases the GIL: threads derive the keys side by side and keep the loop responsive."""
    return tuple(
        await asyncio.gather(
            *(asyncio.to_thread(RootKey.derive, key, salt, iterations) for key in master_keys)
        )
    )


async def _unlock_once(
    sessions: async_sessionmaker[AsyncSession],
    master_key: str,
    iterations_for_new: int,
    previous: tuple[str, ...],
) -> Keyring:
    async with session_scope(sessions) as session:
        now = datetime.now(UTC)
        deployment = await repository.get_deployment(session)
        if deployment is None:
            salt, iterations = new_deployment_salt(), iterations_for_new
            await repository.create_deployment(session, salt, iterations, now)
        else:
            salt, iterations = deployment.kdf_salt, deployment.kdf_iterations
        root, *olds = await derive_all((master_key, *previous), salt, iterations)
        verifiers = await repository.list_verifiers(session)
        for position, old in enumerate(olds, start=1):
            if not old.matches(verifiers.get(old.key_id, b"")):
                raise UnknownPreviousKeyError(position)
        if not verifiers:
            await repository.add_verifier(session, root.key_id, root.verifier(), now)
            return Keyring(root)
        if root.key_id in verifiers and not root.matches(verifiers[root.key_id]):
            raise MasterKeyMismatchError()
        known = root.key_id in verifiers
        retired = known and root.key_id in await repository.retired_key_ids(session)
        if known and not retired:
            return Keyring(root, tuple(olds))
        if olds:
            # A deliberate rotation (or a return to a retired key): a previous key proves it.
            await repository.activate_verifier(session, root.key_id, root.verifier(), now)
            return Keyring(root, tuple(olds))
        if retired:
            raise MasterKeyMismatchError(
                "the master key was retired by a rotation; to return to it, configure the key "
                "that replaced it in MASTER_ENCRYPTION_KEY_PREVIOUS; nothing was written"
            )
        raise MasterKeyMismatchError()
