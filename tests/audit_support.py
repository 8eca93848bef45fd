"""Helpers for the audit tests: a private database per test (for tests that break the chain or
the schema on purpose), and reading back what the trail stored."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from keyvault.audit import repository as audit_repository
from keyvault.audit.events import ChainedEvent
from keyvault.audit.repository import EventFilter
from keyvault.audit.trail import verify_stored_chain
from keyvault.audit.verification import Verification
from keyvault.crypto.records import Keyring
from keyvault.db.engine import create_engine, create_sessionmaker
from keyvault.db.migrations import upgrade_to_head
from keyvault.master_keys.unlock import unlock
from keyvault.web.app import KeyvaultApp, create_app
from tests.conftest import MASTER_KEY, dispose_database, fresh_database_url, make_settings


async def stored_events(database_url: str, target: str | None = None) -> list[ChainedEvent]:
    """Events about `target` (all when None), oldest first."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            events = await audit_repository.list_events(
                connection, EventFilter(target=target), None, 10_000
            )
    finally:
        await engine.dispose()
    return events[::-1]


async def verify(database_url: str, keyring: Keyring) -> Verification:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await verify_stored_chain(connection, keyring)
    finally:
        await engine.dispose()


async def execute_sql(database_url: str, statement: str, **params: Any) -> None:
    """Raw SQL, as someone with write access to the database alone would run it."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement), params)
    finally:
        await engine.dispose()


@dataclass
class PrivateService:
    app: KeyvaultApp
    client: httpx.AsyncClient
    database_url: str
    keyring: Keyring


@asynccontextmanager
async def private_service(
    backend: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[PrivateService]:
    """The service over a database of its own, unlocked for real with the test master key."""
    url = await fresh_database_url(backend, tmp_path)
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        settings = make_settings(url, **overrides)
        engine = create_engine(url)
        try:
            keyring = await unlock(
                create_sessionmaker(engine), MASTER_KEY, iterations_for_new=settings.kdf_iterations
            )
        finally:
            await engine.dispose()
        app = create_app(settings, keyring=keyring)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://keyvault.test"
            ) as client:
                yield PrivateService(app, client, url, keyring)
    finally:
        await dispose_database(url)


@asynccontextmanager
async def another_instance(
    service: PrivateService, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A second app over the same database, as a second worker process would be."""
    app = create_app(make_settings(service.database_url, **overrides), keyring=service.keyring)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://keyvault.test"
        ) as client:
            yield client


def new_sub() -> str:
    """A subject no other test uses, so events in the shared test database can be told apart."""
    return f"google-oauth2|{uuid.uuid4().hex[:10]}"
