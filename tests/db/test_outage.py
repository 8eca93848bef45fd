"""Postgres going away and coming back, on a private cluster this module creates (initdb/pg_ctl).

The shared server on 5432 is never touched. The cluster is stopped (connections refused) or frozen
with SIGSTOP (connections and queries hang) while one app keeps running; every request during the
outage must answer 503 problem+json with Retry-After in under a second (refusals, whose audit event
cannot be stored, and requests queued behind a stuck batch too), and the same app must serve again
once the database is back. Postgres only: SQLite has no server to stop or freeze.
"""

from __future__ import annotations

import httpx
import pytest

from keyvault.db import engine as db
from tests.conftest import BACKENDS, bearer, key_path, mint
from tests.db.outage_support import (
    ALL,
    REQUESTS,
    STORED_KEY,
    PrivatePostgres,
    Served,
    assert_every_request_is_a_quick_503,
    assert_serving_again,
)

pytestmark = pytest.mark.skipif("postgres" not in BACKENDS, reason="Postgres tests not selected")


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
