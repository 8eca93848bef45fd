"""The schema migrations (env.py, versions/), shipped inside the package, and running them from code.

`keyvault migrate`, the server and the tests share this one path, from whatever directory they run.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

# alembic.ini's script_location names this same folder, for the `alembic` CLI in a checkout.
SCRIPT_DIRECTORY = Path(__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_DIRECTORY))
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
