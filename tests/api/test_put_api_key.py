from __future__ import annotations

import httpx

from tests.conftest import TokenFactory, bearer, key_path

ALL = "api-key:read api-key:write api-key:delete"


async def test_first_put_creates_version_one(client: httpx.AsyncClient, token: TokenFactory) -> None:
    response = await client.put(
        key_path("alice"), json={"api_key": "  sk-proj-abcdefghijkl1234  "}, headers=bearer(token("alice", ALL))
    )
    assert response.status_code == 201
    body = response.json()
    assert body["has_api_key"] is True
    assert body["version"] == 1
    assert body["last4"] == "1234"
    assert response.headers["ETag"]

    read = await client.get(key_path("alice"), headers=bearer(token("alice", ALL)))
    assert read.status_code == 200
    assert read.json()["api_key"] == "sk-proj-abcdefghijkl1234"
    assert read.headers["Cache-Control"] == "no-store"
