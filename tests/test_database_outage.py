"""Postgres going away and coming back, on a private cluster this module creates (initdb/pg_ctl).

The shared server on 5432 is never touched. The cluster is stopped (connections refused) or frozen
with SIGSTOP (connections and queries hang) while one app keeps running; every request during the
outage must answer 503 problem+json with Retry-After in under a second, and the same app must serve
again once the database is back.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from starlette.types import Receive, Scope, Send

from keyvault.db.engine import Timeouts, create_engine, create_sessionmaker, session_scope
from keyvault.db.migrations import upgrade_to_head
from keyvault.web.app import create_app
from keyvault.web.middleware import LastResortErrors
from tests.conftest import BACKENDS, bearer, key_path, make_settings, mint

ALL = "api-key:read api-key:write api-key:delete"
OUTAGE_ANSWER_SECONDS = 1.0
STORED_KEY = "sk-outage-survivor-0123456789"

pytestmark = pytest.mark.skipif("postgres" not in BACKENDS, reason="Postgres tests not selected")


def _postgres_bin() -> Path | None:
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = versions[0] if versions else shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivatePostgres:
    """A throw-away cluster on a random port, run as `postgres` when we are root (initdb refuses root)."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=check, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def freeze(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    def _processes(self) -> list[int]:
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = _postgres_bin()
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
async def http(private_postgres: PrivatePostgres) -> AsyncIterator[httpx.AsyncClient]:
    """One app for the whole test: it must ride out the outage, not be rebuilt after it."""
    application = create_app(make_settings(private_postgres.url, rate_limit=""))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as client:
            stored = await client.put(
                key_path("alice"), json={"api_key": STORED_KEY}, headers=bearer(mint("alice", ALL))
            )
            assert stored.status_code in (200, 201)
            yield client


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
    private_postgres.freeze()
    try:
        yield private_postgres
    finally:
        private_postgres.thaw()


REQUESTS = [
    ("GET", key_path("alice"), None),
    ("GET", key_path("alice", "/status"), None),
    ("PUT", key_path("alice"), {"api_key": "sk-written-during-outage-0000"}),
    ("DELETE", key_path("alice"), None),
    ("GET", "/readyz", None),
]


async def assert_every_request_is_a_quick_503(client: httpx.AsyncClient) -> None:
    headers = bearer(mint("alice", ALL))
    for method, path, body in REQUESTS:
        started = time.monotonic()
        response = await client.request(method, path, json=body, headers=headers)
        elapsed = time.monotonic() - started

        assert response.status_code == 503, (method, path, response.text)
        assert elapsed < OUTAGE_ANSWER_SECONDS, (method, path, elapsed)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert response.json()["type"].endswith("/database-unavailable")
        assert "Traceback" not in response.text


async def assert_serving_again(client: httpx.AsyncClient) -> None:
    headers = bearer(mint("alice", ALL))
    read = await client.get(key_path("alice"), headers=headers)
    assert read.status_code == 200
    assert read.json()["api_key"] == STORED_KEY
    assert (await client.get("/readyz")).status_code == 200
    written = await client.put(
        key_path("alice"), json={"api_key": "sk-written-after-outage-0000"}, headers=headers
    )
    assert written.status_code == 200


async def test_stopped_database_answers_503_with_retry_after_within_a_second(
    http: httpx.AsyncClient, stopped: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    await assert_every_request_is_a_quick_503(http)

    assert not [record for record in caplog.records if record.exc_info]


async def test_service_recovers_by_itself_when_the_stopped_database_is_back(
    http: httpx.AsyncClient, stopped: PrivatePostgres
) -> None:
    refused = await http.get(key_path("alice"), headers=bearer(mint("alice", ALL)))
    assert refused.status_code == 503

    stopped.start()

    await assert_serving_again(http)


async def test_frozen_database_answers_503_with_retry_after_within_a_second(
    http: httpx.AsyncClient, frozen: PrivatePostgres
) -> None:
    await assert_every_request_is_a_quick_503(http)


async def test_service_recovers_by_itself_when_the_frozen_database_thaws(
    http: httpx.AsyncClient, frozen: PrivatePostgres
) -> None:
    refused = await http.get(key_path("alice"), headers=bearer(mint("alice", ALL)))
    assert refused.status_code == 503

    frozen.thaw()

    await assert_serving_again(http)


async def test_liveness_and_metrics_keep_answering_during_an_outage(
    http: httpx.AsyncClient, stopped: PrivatePostgres
) -> None:
    await http.get(key_path("alice"), headers=bearer(mint("alice", ALL)))

    live = await http.get("/healthz")
    scraped = await http.get("/metrics")

    assert live.status_code == 200
    assert scraped.status_code == 200
    assert "keyvault_database_unavailable_total" in scraped.text


async def test_a_statement_cancelled_by_the_server_is_a_503_not_a_500(
    private_postgres: PrivatePostgres,
) -> None:
    # A generous client-side timeout, so the server's statement_timeout is what cancels the query.
    engine = create_engine(private_postgres.url, Timeouts(connect=5, statement=5, pool=5))
    sessions = create_sessionmaker(engine)

    async def slow_query(scope: Scope, receive: Receive, send: Send) -> None:
        async with session_scope(sessions) as session:
            await session.execute(text("SET LOCAL statement_timeout = '50ms'"))
            await session.execute(text("SELECT pg_sleep(2)"))

    transport = httpx.ASGITransport(app=LastResortErrors(slow_query))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as client:
            response = await asyncio.wait_for(client.get("/slow"), timeout=5)
    finally:
        await engine.dispose()

    assert response.status_code == 503
    assert response.json()["type"].endswith("/database-unavailable")
