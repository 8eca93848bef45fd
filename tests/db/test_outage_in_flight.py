"""Work in flight when the database fails, on the private cluster of test_outage.py: a statement the
server cancels, refusals whose audit event cannot be stored, and a PUT queued behind a stuck batch
must each answer 503 problem+json in under a second. Postgres only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.types import Receive, Scope, Send

from keyvault.db import engine as db
from keyvault.db.batching import BatchQueue
from keyvault.db.engine import Timeouts, create_engine, create_sessionmaker, session_scope
from keyvault.web.middleware import LastResortErrors
from keyvault.web.state import state_of
from tests.audit_support import verify
from tests.conftest import BACKENDS, bearer, key_path, mint
from tests.db.outage_support import (
    ALL,
    FREEZE_SECONDS,
    QUEUED_MARGIN_SECONDS,
    STORED_KEY,
    PrivatePostgres,
    Served,
    assert_quick_503,
    assert_serving_again,
    timed,
)

pytestmark = pytest.mark.skipif("postgres" not in BACKENDS, reason="Postgres tests not selected")


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
    assert (await verify(private_postgres.url, state_of(served.app).keyring.current)).intact


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
    assert (await verify(private_postgres.url, state_of(served.app).keyring.current)).intact


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
