from __future__ import annotations

import asyncio
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from keyvault.db.engine import create_engine
from keyvault.db.migrations import alembic_config, upgrade_to_head
from keyvault.db.models import Base


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
