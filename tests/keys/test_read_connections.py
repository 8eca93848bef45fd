"""GET /users/{sub}/api-key: its JSON body, ETag and no-store, its 404, and (Postgres, where it
queries the pooled asyncpg connection directly) a dropped connection answered 503 once, then
served."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import POSTGRES_ADMIN_URL, TokenFactory, _asyncpg_dsn, bearer, key_path

ALL = "api-key:read api-key:write api-key:delete"


async def test_read_answers_json_with_the_writes_etag_and_no_store(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    headers = bearer(token("carol", ALL))
    written = await client.put(
        key_path("carol"), json={"api_key": "sk-carol-0123456789"}, headers=headers
    )

    read = await client.get(key_path("carol"), headers=headers)

    assert read.status_code == 200
    assert read.headers["content-type"] == "application/json"
    assert read.headers["ETag"] == written.headers["ETag"]
    assert read.headers["Cache-Control"] == "no-store"
    body = read.json()
    status = (await client.get(key_path("carol", "/status"), headers=headers)).json()
    assert body == {
        "sub": "carol",
        "provider": "openai",
        "api_key": "sk-carol-0123456789",
        "last4": "6789",
        "label": None,
        "created_at": status["created_at"],
        "updated_at": status["updated_at"],
        "expires_at": None,
        "version": 1,
    }


async def test_read_of_a_user_without_a_key_is_a_404_problem(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    read = await client.get(key_path("nobody"), headers=bearer(token("nobody", ALL)))

    assert read.status_code == 404
    assert read.headers["content-type"] == "application/problem+json"


async def _terminate_connections_to(database_url: str) -> None:
    database = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL))
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()


async def test_read_after_the_database_dropped_its_connections_is_503_once_then_served(
    backend: str, database_url: str, app: FastAPI, client: httpx.AsyncClient, token: TokenFactory
) -> None:
    if backend != "postgres":
        pytest.skip("the direct asyncpg path is Postgres only")
    headers = bearer(token("dave", ALL))
    await client.put(key_path("dave"), json={"api_key": "sk-dave-0123456789"}, headers=headers)
    assert (await client.get(key_path("dave"), headers=headers)).status_code == 200
    await _terminate_connections_to(database_url)

    failed = await client.get(key_path("dave"), headers=headers)
    served = await client.get(key_path("dave"), headers=headers)

    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "1"
    assert "sk-dave" not in failed.text
    assert served.status_code == 200
    assert served.json()["api_key"] == "sk-dave-0123456789"
