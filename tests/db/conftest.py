"""Fixtures of the outage tests (test_outage*.py): one private Postgres cluster for them all,
stopped or frozen on request, and one app per test that must ride out the outage."""

from __future__ import annotations

import os
import pwd
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from keyvault.db.migrations import upgrade_to_head
from keyvault.web.app import create_app
from tests.conftest import SERVICE_DATABASE_TIMEOUTS, bearer, key_path, make_settings, mint
from tests.db.outage_support import (
    ALL,
    STORED_KEY,
    PrivatePostgres,
    Served,
    postgres_bin,
)


@pytest.fixture(scope="package")
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("initdb/pg_ctl not installed")
    root = Path(tempfile.mkdtemp(prefix="kv-pg-"))
    if os.geteuid() == 0:
        os.chown(root, pwd.getpwnam("postgres").pw_uid, -1)
    cluster = PrivatePostgres(bin_dir, root)
    try:
        cluster.init()
        cluster.start()
        upgrade_to_head(cluster.url)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
async def served(private_postgres: PrivatePostgres) -> AsyncIterator[Served]:
    """One app for the whole test: it must ride out the outage, not be rebuilt after it."""
    settings = make_settings(private_postgres.url, rate_limit="", **SERVICE_DATABASE_TIMEOUTS)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as client:
            stored = await client.put(
                key_path("alice"), json={"api_key": STORED_KEY}, headers=bearer(mint("alice", ALL))
            )
            assert stored.status_code in (200, 201)
            yield Served(application, client)


@pytest.fixture
def http(served: Served) -> httpx.AsyncClient:
    return served.http


@pytest.fixture
def stopped(private_postgres: PrivatePostgres) -> Iterator[PrivatePostgres]:
    private_postgres.stop()
    try:
        yield private_postgres
    finally:
        if not (private_postgres.data / "postmaster.pid").exists():
            private_postgres.start()


@pytest.fixture
def frozen(private_postgres: PrivatePostgres) -> Iterator[PrivatePostgres]:
    with private_postgres.frozen():
        yield private_postgres
