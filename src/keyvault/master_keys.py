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
    def __init__(self) -> None:
        super().__init__(
            "the master key does not match the one this database was created with; nothing was written"
        )


async def unlock(
    sessions: async_sessionmaker[AsyncSession], master_key: str, *, iterations_for_new: int
) -> Keyring:
    """The keyring for this deployment, creating its salt and verifier on first use.

    Two processes starting on an empty database race to create the deployment row; the loser's
    insert fails on the primary key and it simply reads what the winner wrote.
    """
    try:
        return await _unlock_once(sessions, master_key, iterations_for_new)
    except IntegrityError:
        return await _unlock_once(sessions, master_key, iterations_for_new)


async def _unlock_once(
    sessions: async_sessionmaker[AsyncSession], master_key: str, iterations_for_new: int
) -> Keyring:
    async with session_scope(sessions) as session:
        now = datetime.now(UTC)
        deployment = await repository.get_deployment(session)
        if deployment is None:
            salt, iterations = new_deployment_salt(), iterations_for_new
            await repository.create_deployment(session, salt, iterations, now)
        else:
            salt, iterations = deployment.kdf_salt, deployment.kdf_iterations
        # PBKDF2 releases the GIL; a thread keeps the event loop responsive while it runs.
        root = await asyncio.to_thread(RootKey.derive, master_key, salt, iterations)
        verifiers = await repository.list_verifiers(session)
        if not verifiers:
            await repository.add_verifier(session, root.key_id, root.verifier(), now)
        elif not root.matches(verifiers.get(root.key_id, b"")):
            raise MasterKeyMismatchError()
        return Keyring(root)
