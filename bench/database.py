"""The benchmark's throw-away Postgres databases: created and dropped through the admin URL, and
seeded with users through the service's own sealing and SQL (plus a copy for the ceiling app)."""

from __future__ import annotations

import os
import secrets

import asyncpg
from sqlalchemy.engine import make_url

from keyvault.config import Settings
from keyvault.crypto.records import MIN_KDF_ITERATIONS
from keyvault.db.engine import create_engine, create_sessionmaker, session_scope
from keyvault.keys import service
from keyvault.master_keys.unlock import unlock

ADMIN_URL = os.environ.get(
    "KEYVAULT_BENCH_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/postgres"
)
SEED_BATCH = 200


def asyncpg_dsn(database: str) -> str:
    url = make_url(ADMIN_URL).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


async def create_database(name: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(make_url(ADMIN_URL).database or "postgres"))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def drop_database(name: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(make_url(ADMIN_URL).database or "postgres"))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def seed(settings: Settings, users: int) -> None:
    """N users through the service's own code, then the ceiling's copy of the same rows."""
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        sessions = create_sessionmaker(engine)
        keyring = await unlock(
            sessions, settings.master_key(), iterations_for_new=MIN_KDF_ITERATIONS
        )
        for first in range(1, users + 1, SEED_BATCH):
            async with session_scope(sessions) as session:
                for index in range(first, min(first + SEED_BATCH, users + 1)):
                    api_key = f"sk-bench-{secrets.token_hex(16)}"
                    sub = f"bench-user-{index:05d}"
                    await service.put_api_key(session, keyring, sub, "openai", api_key)
    finally:
        await engine.dispose()
    connection = await asyncpg.connect(
        asyncpg_dsn(make_url(settings.database_url.get_secret_value()).database or "")
    )
    try:
        await connection.execute(
            "CREATE TABLE ceiling_api_keys (LIKE api_keys INCLUDING ALL);"
            "INSERT INTO ceiling_api_keys SELECT * FROM api_keys;"
            "ANALYZE"
        )
    finally:
        await connection.close()
