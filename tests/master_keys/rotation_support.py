"""Helpers for root-key rotation tests: a deployment's keyring opened as the service opens it,
rotated as `keyvault keys rotate-root` rotates it, and its records rewrapped and counted."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from keyvault.config import Settings
from keyvault.crypto.records import Keyring
from keyvault.db.engine import session_scope
from keyvault.master_keys import repository, root_rotation, rotation
from keyvault.master_keys.keyring import open_keyring, seal_opener
from tests.conftest import make_settings
from tests.deployments import create_deployment, keyring_for, open_sessions, store_records


def env_settings(database_url: str, master_key: str, *previous: str) -> Settings:
    return make_settings(
        database_url,
        MASTER_ENCRYPTION_KEY=master_key,
        MASTER_ENCRYPTION_KEY_PREVIOUS=",".join(previous) or None,
    )


async def env_deployment(database_url: str, master_key: str, subs: list[str]) -> Keyring:
    """A deployment under `master_key` with a record for each sub, sealed under its derived key."""
    await create_deployment(database_url, master_key)
    keyring = await keyring_for(database_url, master_key)
    await store_records(database_url, keyring, subs)
    return keyring


async def opened(settings: Settings) -> Keyring:
    async with open_sessions(settings.database_url.get_secret_value()) as sessions:
        return await open_keyring(sessions, settings)


async def rotate_root(settings: Settings) -> Keyring:
    """What `keyvault keys rotate-root` does: the keyring with its new active key."""
    async with open_sessions(settings.database_url.get_secret_value()) as sessions:
        keyring = await open_keyring(sessions, settings)
        seal = await seal_opener(settings, keyring)()
        try:
            return await root_rotation.rotate_root(sessions, seal, keyring)
        finally:
            seal.close()


async def rewrap(settings: Settings, keyring: Keyring) -> rotation.RewrapReport:
    async with open_sessions(settings.database_url.get_secret_value()) as sessions:
        return await rotation.rewrap(sessions, keyring, batch_size=7)


async def remove_emptied(settings: Settings, keyring: Keyring) -> list[str]:
    """Remove every emptied retired key at once (no grace), as the service does after it."""
    async with open_sessions(settings.database_url.get_secret_value()) as sessions:
        seal = await seal_opener(settings, keyring)()
        try:
            return await root_rotation.remove_emptied(
                sessions, seal, keyring, retired_before=datetime.now(UTC)
            )
        finally:
            seal.close()


async def records_by_key_id(database_url: str) -> Counter[str]:
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        usage = await repository.count_records_by_key(session)
    counts: Counter[str] = Counter()
    for entry in usage:
        counts[entry.key_id] += entry.records
    return counts
