from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, update

from keyvault.crypto.records import new_deployment_salt
from keyvault.db.engine import create_engine, session_scope
from keyvault.db.migrations import alembic_config, upgrade_to_head
from keyvault.db.models import Base, RootKeyEntry
from keyvault.master_keys import keyring_repository, repository
from keyvault.master_keys.unlock import unlock
from tests.deployments import (
    CHEAP_ITERATIONS,
    NEW_KEY,
    OLD_KEY,
    create_deployment,
    database_contents,
    keyring_entries,
    keyring_for,
    open_sessions,
)


async def _diff(database_url: str) -> list[Any]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()


async def _tables(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_migrations_create_exactly_the_models(empty_database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    assert await _diff(empty_database_url) == []


async def test_migrations_downgrade_to_nothing_and_up_again(empty_database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    await asyncio.to_thread(command.downgrade, alembic_config(empty_database_url), "base")
    assert await _tables(empty_database_url) <= {"alembic_version"}
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    assert await _diff(empty_database_url) == []


async def test_the_keyring_starts_as_the_verifiers_were(empty_database_url: str) -> None:
    """Upgrading an existing deployment: each master key becomes an env entry, active or retired."""
    await asyncio.to_thread(command.upgrade, alembic_config(empty_database_url), "0005")
    async with open_sessions(empty_database_url) as sessions:
        async with session_scope(sessions) as session:
            await repository.create_deployment(
                session, new_deployment_salt(), CHEAP_ITERATIONS, datetime.now(UTC)
            )
        old = await unlock(sessions, OLD_KEY, iterations_for_new=CHEAP_ITERATIONS)
        new = await unlock(
            sessions, NEW_KEY, iterations_for_new=CHEAP_ITERATIONS, previous=(OLD_KEY,)
        )

    await asyncio.to_thread(upgrade_to_head, empty_database_url)

    entries = {entry.key_id: entry for entry in await keyring_entries(empty_database_url)}
    assert set(entries) == {old.current.key_id, new.current.key_id}
    assert all(entry.seal == "env" and entry.wrapped is None for entry in entries.values())
    assert entries[new.current.key_id].active
    assert not entries[old.current.key_id].active
    assert (await keyring_for(empty_database_url, NEW_KEY)).current == new.current


async def test_downgrade_refuses_to_drop_wrapped_root_keys(empty_database_url: str) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    async with open_sessions(empty_database_url) as sessions, session_scope(sessions) as session:
        now = datetime.now(UTC)
        await keyring_repository.retire_active_root_keys(
            session, [(await keyring_entries(empty_database_url))[0].key_id], now
        )
        await keyring_repository.add_root_key(
            session, "00" * 8, "pkcs11", bytes(61), now, material=bytes(32)
        )
    # Down to the keyring's own revision first: SQLite commits each later revision's downgrade
    # (its DDL) before this one refuses.
    await asyncio.to_thread(command.downgrade, alembic_config(empty_database_url), "0006")
    before = await database_contents(empty_database_url)

    with pytest.raises(RuntimeError, match="the keyring holds wrapped root keys"):
        await asyncio.to_thread(command.downgrade, alembic_config(empty_database_url), "0005")

    assert await database_contents(empty_database_url) == before


async def test_downgrade_refuses_to_drop_the_audit_keys_of_removed_root_keys(
    empty_database_url: str,
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    (entry,) = await keyring_entries(empty_database_url)
    async with open_sessions(empty_database_url) as sessions, session_scope(sessions) as session:
        await session.execute(
            update(RootKeyEntry)
            .where(RootKeyEntry.key_id == entry.key_id)
            .values(purpose="audit", wrapped=bytes(61))
        )
    # Down to the rotation's own revision first, as above.
    await asyncio.to_thread(command.downgrade, alembic_config(empty_database_url), "0007")
    before = await database_contents(empty_database_url)

    with pytest.raises(RuntimeError, match="keeps audit keys of removed root keys"):
        await asyncio.to_thread(command.downgrade, alembic_config(empty_database_url), "0006")

    assert await database_contents(empty_database_url) == before
