"""Fixtures: a real database per backend per run (SQLite file, throw-away Postgres database),
migrated by Alembic; a fresh app per test over it; tokens minted with the test secret.

KEYVAULT_TEST_DATABASES picks the backends (default "sqlite,postgres"); KEYVAULT_TEST_POSTGRES_URL
is an admin URL on the server where throw-away databases are created and dropped.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import delete
from sqlalchemy.engine import make_url

from keyvault.config import Settings
from keyvault.crypto.records import MIN_KDF_ITERATIONS, Keyring
from keyvault.db.engine import create_engine, create_sessionmaker, session_scope
from keyvault.db.migrations import upgrade_to_head
from keyvault.db.models import ApiKeyRecord
from keyvault.master_keys.unlock import unlock
from keyvault.web.app import create_app

if TYPE_CHECKING:
    from tests.softhsm import SoftHsm

MASTER_KEY = "test-master-key-0123456789-abcdefghijklmnop"
JWT_SECRET = "test-jwt-secret-0123456789-abcdefghijklmnop"
ISSUER = "keyvault-tests"
AUDIENCE = "keyvault"

BACKENDS = [
    b.strip()
    for b in os.environ.get("KEYVAULT_TEST_DATABASES", "sqlite,postgres").split(",")
    if b.strip()
]
POSTGRES_ADMIN_URL = os.environ.get(
    "KEYVAULT_TEST_POSTGRES_URL", "postgresql+asyncpg://root@127.0.0.1:5432/postgres"
)


# The service's own database timeouts, for the tests that hold it to them (an outage answered
# within a second).
SERVICE_DATABASE_TIMEOUTS: dict[str, Any] = {
    name: Settings.model_fields[name].default
    for name in ("database_connect_timeout", "database_statement_timeout", "database_pool_timeout")
}


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for tests, never read from the developer's own environment or .env."""
    values: dict[str, Any] = {
        "MASTER_ENCRYPTION_KEY": MASTER_KEY,
        "database_url": database_url,
        "jwt_secret": JWT_SECRET,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "kdf_iterations": MIN_KDF_ITERATIONS,
        # The service's 0.4 s bounds assume a machine that is not also running this suite on every
        # core: a connect that took 0.5 s failed a start-up here. Tests of the bounds ask for them
        # (SERVICE_DATABASE_TIMEOUTS).
        **dict.fromkeys(SERVICE_DATABASE_TIMEOUTS, 5),
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def _asyncpg_dsn(sqlalchemy_url: str, database: str | None = None) -> str:
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


async def create_postgres_database() -> str:
    name = f"keyvault_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(database_url: str) -> None:
    name = make_url(database_url).database
    connection = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def fresh_database_url(backend: str, tmp_dir: Path) -> str:
    """An empty database of the given backend (not migrated)."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_dir / f'keyvault-{uuid.uuid4().hex[:8]}.db'}"
    return await create_postgres_database()


async def dispose_database(database_url: str) -> None:
    if database_url.startswith("postgresql"):
        await drop_postgres_database(database_url)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
async def database_url(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    url = await fresh_database_url(backend, tmp_path_factory.mktemp(backend))
    await asyncio.to_thread(upgrade_to_head, url)
    yield url
    await dispose_database(url)


@pytest.fixture
async def empty_database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database of its own for tests that migrate or unlock from scratch."""
    url = await fresh_database_url(backend, tmp_path)
    yield url
    await dispose_database(url)


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture(scope="session")
async def keyring(settings: Settings) -> AsyncIterator[Keyring]:
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        yield await unlock(
            create_sessionmaker(engine), MASTER_KEY, iterations_for_new=settings.kdf_iterations
        )
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """A SoftHSM2 token of this test session's own, for the pkcs11 seal (tests/softhsm.py)."""
    from tests.softhsm import start_softhsm

    return start_softhsm(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture
def hsm_key(softhsm: SoftHsm) -> str:
    """The label of a new wrapping key in the token, this test's alone."""
    return softhsm.new_key()


@pytest.fixture
async def app(settings: Settings, keyring: Keyring) -> AsyncIterator[FastAPI]:
    application = create_app(settings, keyring=keyring)
    async with application.router.lifespan_context(application):
        yield application
    await _empty_tables(settings.database_url.get_secret_value())


async def _empty_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with session_scope(create_sessionmaker(engine)) as session:
            await session.execute(delete(ApiKeyRecord))
    finally:
        await engine.dispose()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyvault.test") as http:
        yield http


TokenFactory = Callable[..., str]


def mint(sub: str = "alice", scope: str = "", *, secret: str = JWT_SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": sub,
        "scope": scope,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture
def token() -> TokenFactory:
    return mint


def bearer(token_value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_value}"}


def key_path(sub: str, suffix: str = "") -> str:
    from urllib.parse import quote

    return f"/users/{quote(sub, safe='')}/api-key{suffix}"
