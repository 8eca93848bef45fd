"""Alembic environment, async: migrations run over the same engine kind the service uses."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from keyvault.db.engine import DEFAULT_DATABASE_URL, create_engine
from keyvault.db.models import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    """The URL `keyvault migrate` and the tests set on the Config (keyvault.db.migrations); for the
    bare `alembic` command in a checkout, KEYVAULT_DATABASE_URL as the environment has it: an async
    driver's URL, read without the settings' .env file, `_FILE` variant or `postgres://` rewrite."""
    url = config.get_main_option("sqlalchemy.url")
    return url or os.environ.get("KEYVAULT_DATABASE_URL") or DEFAULT_DATABASE_URL


def _run(connection: Connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(_database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
