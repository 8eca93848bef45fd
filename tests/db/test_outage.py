"""Postgres going away and coming back, on a private cluster this module creates (initdb/pg_ctl).

The shared server on 5432 is never touched. The cluster is stopped (connections refused) or frozen
with SIGSTOP (connections and queries hang) while one app keeps running; every request during the
outage must answer 503 problem+json with Retry-After in under a second (refusals, whose audit event
cannot be stored, and requests queued behind a stuck batch too), and the same app must serve again
once the database is back. Postgres only: SQLite has no server to stop or freeze.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.types import Receive, Scope, Send

from keyvault.db import engine as db
from keyvault.db.batching import BatchQueue
from keyvault.db.engine import Timeouts, create_engine, create_sessionmaker, session_scope
from keyvault.db.migrations import upgrade_to_head
from keyvault.web.app import KeyvaultApp, create_app
from keyvault.web.middleware import LastResortErrors
from keyvault.web.state import state_of
from tests.audit_support import verify
from tests.conftest import BACKENDS, bearer, key_path, make_settings, mint

ALL = "api-key:read api-key:write api-key:delete"
OUTAGE_ANSWER_SECONDS = 1.0
# A request that waited for the database instead of giving up would take as long as the freeze; the
# tests freeze it for longer than this and count such a wait as a failure.
FREEZE_SECONDS = 5.0
# A request queued behind a batch that met the outage is answered with that batch, not after one of
# its own (which would take another timeout); this is the room left for scheduling.
QUEUED_MARGIN_SECONDS = 0.1
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

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Frozen inside the block; thawed when it ends, however it ends."""
        try:
            self.freeze()
            yield
        finally:
            self.thaw()

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


@dataclass
class Served:
    app: KeyvaultApp
    http: httpx.AsyncClient


@pytest.fixture
async def served(private_postgres: PrivatePostgres) -> AsyncIterator[Served]:
    """One app for the whole test: it must ride out the outage, not be rebuilt after it."""
    application = create_app(make_settings(private_postgres.url, rate_limit=""))
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


def assert_quick_503(response: httpx.Response, elapsed: float, what: str) -> None:
    # The documented figure is under a second; the margin is for a loaded test machine, while a
    # request that waited for the freeze would take FREEZE_SECONDS.
    assert response.status_code == 503, (what, response.text)
    assert elapsed < OUTAGE_ANSWER_SECONDS * 1.5, (what, elapsed)
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert "Traceback" not in response.text


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    """The response and how long it took; a request still waiting after FREEZE_SECONDS fails."""
    started = time.monotonic()
    try:
        response = await asyncio.wait_for(request, FREEZE_SECONDS)
    except TimeoutError:
        pytest.fail(f"no answer within {FREEZE_SECONDS} s: the request waited for the database")
    return response, time.monotonic() - started


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


async def test_frozen_database_after_a_quiet_moment_answers_503_within_a_second(
    served: Served, private_postgres: PrivatePostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = bearer(mint("alice", ALL))
    for method, path, _ in REQUESTS:  # every kind once, so the pools hold idle connections
        if method != "DELETE":
            body = {"api_key": STORED_KEY} if method == "PUT" else None
            response = await served.http.request(method, path, json=body, headers=headers)
            assert response.status_code < 300, (method, path)
    # As after a quiet moment: every connection has been idle long enough to be pinged before use.
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)

    with private_postgres.frozen():
        await assert_every_request_is_a_quick_503(served.http)

    await assert_serving_again(served.http)


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


async def test_refusals_during_a_freeze_answer_503_within_a_second(
    served: Served, private_postgres: PrivatePostgres
) -> None:
    # Reads first, so that the audit trail holds a connection and knows the chain head, as in a
    # server that has been serving: a refusal's audit event is what meets the frozen database.
    for _ in range(2):
        read = await served.http.get(key_path("alice"), headers=bearer(mint("alice", ALL)))
        assert read.status_code == 200
    events = state_of(served.app).audit._group
    refusals = [
        ("no token (401)", "GET", {}),
        ("no token on a PUT (401)", "PUT", {}),
        ("another user's key (403)", "GET", bearer(mint("bob", ALL))),
        ("no token again (401)", "GET", {}),
    ]

    with private_postgres.frozen():
        for what, method, headers in refusals:
            body = {"api_key": "sk-refused-during-outage-000"} if method == "PUT" else None
            response, elapsed = await timed(
                served.http.request(method, key_path("alice"), json=body, headers=headers)
            )
            assert_quick_503(response, elapsed, what)

        # Two at once: the second one's event waits behind the first one's stuck batch.
        refuse = served.http.get(key_path("alice"))
        first = asyncio.ensure_future(timed(refuse))
        await until(lambda: _batch_running(events), "the first refusal's event to be flushed")
        queued, queued_elapsed = await timed(served.http.get(key_path("alice")))
        first_response, first_elapsed = await first
        assert_quick_503(first_response, first_elapsed, "the refusal whose event is stuck")
        assert_quick_503(queued, queued_elapsed, "the refusal queued behind it")
        assert queued_elapsed < first_elapsed + QUEUED_MARGIN_SECONDS, "it waited for a batch too"

    await assert_serving_again(served.http)
    assert (await verify(private_postgres.url, state_of(served.app).keyring)).intact


async def test_a_put_queued_behind_a_stuck_one_answers_503_within_a_second(
    served: Served, private_postgres: PrivatePostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As after a quiet moment: every pooled connection has been idle long enough to be pinged
    # before use, the slowest way for a write to meet the frozen database.
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)
    headers = bearer(mint("alice", ALL))
    writes = state_of(served.app).key_writes._batches

    def put(api_key: str) -> Awaitable[httpx.Response]:
        return served.http.put(key_path("alice"), json={"api_key": api_key}, headers=headers)

    # A read keeps its connection; the write after it leaves one idle in the pool, as a server
    # that has been serving has, which the frozen batch then pings.
    assert (await served.http.get(key_path("alice"), headers=headers)).status_code == 200
    stored = await put(STORED_KEY)
    assert stored.status_code == 200
    with private_postgres.frozen():
        first = asyncio.ensure_future(timed(put("sk-first-during-outage-00000")))
        await until(lambda: _batch_running(writes), "the first PUT's batch to start")
        queued, queued_elapsed = await timed(put("sk-queued-during-outage-0000"))
        first_response, first_elapsed = await first
        assert_quick_503(first_response, first_elapsed, "the PUT whose batch is stuck")
        assert_quick_503(queued, queued_elapsed, "the PUT queued behind it")
        assert queued_elapsed < first_elapsed + QUEUED_MARGIN_SECONDS, "it waited for a batch too"

    # A 503 wrote nothing: not during the freeze, nor once the database thawed.
    await until(lambda: _idle(writes), "the writer to be idle")
    read = await served.http.get(key_path("alice"), headers=headers)
    assert read.status_code == 200
    assert read.json()["api_key"] == STORED_KEY
    assert read.json()["version"] == stored.json()["version"]
    await assert_serving_again(served.http)
    assert (await verify(private_postgres.url, state_of(served.app).keyring)).intact


def _batch_running(batches: BatchQueue[Any, Any]) -> bool:
    """A batch has been taken from the queue and is running, and nothing is left queued."""
    return batches._runner is not None and not batches._queue


def _idle(batches: BatchQueue[Any, Any]) -> bool:
    return batches._runner is None


async def until(condition: Callable[[], bool], what: str, seconds: float = FREEZE_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {seconds} s for {what}")
        await asyncio.sleep(0.005)
