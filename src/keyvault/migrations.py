"""Running Alembic from code, so `keyvault migrate`, the server and the tests share one path."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine


def alembic_directory() -> Path:
    """`alembic/` beside the source tree, or where KEYVAULT_ALEMBIC_DIR points (e.g. in the image)."""
    configured = os.environ.get("KEYVAULT_ALEMBIC_DIR")
    if configured:
        return Path(configured)
    beside_source = Path(__file__).resolve().parents[2] / "alembic"
    return beside_source if beside_source.is_dir() else Path.cwd() / "alembic"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(alembic_directory()))
    # ConfigParser interpolation would read a '%' in a URL-encoded password as a reference.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str) -> None:
    """Blocking: Alembic's env.py runs its own event loop. Call from a thread inside async code."""
    command.upgrade(alembic_config(database_url), "head")


async def is_at_head(engine: AsyncEngine, database_url: str) -> bool:
    heads = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    async with engine.connect() as connection:
        current = await connection.run_sync(
            lambda sync: set(MigrationContext.configure(sync).get_current_heads())
        )
    return current == heads
