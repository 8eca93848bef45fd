"""Helpers for tests that need a deployment of their own: master keys, records under chosen keys.

A deployment created here records a low PBKDF2 iteration count in its `deployment` row, which
`unlock` then uses as it would any existing deployment's: tests derive keys in microseconds
instead of half a second each, through the same code path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.crypto.records import Keyring, RootKey, SealedRecord, new_deployment_salt
from keyvault.db.engine import create_engine, create_sessionmaker, session_scope
from keyvault.db.migrations import upgrade_to_head
from keyvault.db.models import ApiKeyRecord
from keyvault.keys import repository
from keyvault.keys.service import last4_of
from keyvault.master_keys import keyring_repository
from keyvault.master_keys import repository as master_key_repository
from keyvault.master_keys.keyring_repository import StoredRootKey
from keyvault.master_keys.unlock import unlock

OLD_KEY = "old-master-key-0123456789-abcdefghijklmnop"
NEW_KEY = "new-master-key-0123456789-abcdefghijklmnop"
OTHER_KEY = "other-master-key-0123456789-abcdefghijklm"
CHEAP_ITERATIONS = 1_000


async def create_deployment(database_url: str, master_key: str) -> None:
    """Migrate an empty database and make `master_key` its first (current) key."""
    await asyncio.to_thread(upgrade_to_head, database_url)
    async with open_sessions(database_url) as sessions:
        async with session_scope(sessions) as session:
            now = datetime.now(UTC)
            await master_key_repository.create_deployment(
                session, new_deployment_salt(), CHEAP_ITERATIONS, now
            )
        await unlock(sessions, master_key, iterations_for_new=CHEAP_ITERATIONS)


@asynccontextmanager
async def open_sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def keyring_for(database_url: str, master_key: str, *previous: str) -> Keyring:
    async with open_sessions(database_url) as sessions:
        return await unlock(
            sessions, master_key, iterations_for_new=CHEAP_ITERATIONS, previous=previous
        )


def api_key_of(sub: str) -> str:
    return f"sk-test-{sub}-0123456789"


async def store_records(
    database_url: str, keyring: Keyring, subs: Iterable[str], provider: str = "openai"
) -> None:
    """Seal `api_key_of(sub)` as each sub's `provider` key under the keyring's current key, in one
    bulk insert."""
    records = [
        repository.NewRecord(
            sub, provider, keyring.seal(sub, provider, api_key_of(sub)), last4_of(api_key_of(sub))
        )
        for sub in subs
    ]
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        await repository.insert_records(session, records, datetime.now(UTC))


async def open_all(database_url: str, keyring: Keyring, provider: str = "openai") -> dict[str, str]:
    """Every stored `provider` key, opened: sub → API key (raises if any fails to open)."""
    rows = await stored_rows(database_url, provider)
    return {sub: keyring.open(sub, provider, sealed_of(row)) for sub, row in rows.items()}


async def stored_rows(database_url: str, provider: str = "openai") -> dict[str, ApiKeyRecord]:
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        statement = select(ApiKeyRecord).where(ApiKeyRecord.provider == provider)
        rows = (await session.execute(statement)).scalars().all()
    return {row.sub: row for row in rows}


def sealed_of(row: ApiKeyRecord) -> SealedRecord:
    return SealedRecord(row.format_version, row.key_id, row.salt, row.nonce, row.ciphertext)


async def key_id_of(database_url: str, master_key: str) -> str:
    """A master key's id in this deployment, derived directly: no verifier check, nothing written."""
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        deployment = await master_key_repository.get_deployment(session)
    assert deployment is not None
    return RootKey.derive(master_key, deployment.kdf_salt, deployment.kdf_iterations).key_id


async def keyring_entries(database_url: str) -> list[StoredRootKey]:
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        return await keyring_repository.list_root_keys(session)


async def database_contents(database_url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, in a stable order: equal before and after means nothing was written."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            schema = MetaData()
            await connection.run_sync(schema.reflect)
            contents = {}
            for table in schema.sorted_tables:
                rows = (await connection.execute(select(table))).tuples().all()
                contents[table.name] = sorted((tuple(row) for row in rows), key=repr)
            return contents
    finally:
        await engine.dispose()
