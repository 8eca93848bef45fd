"""The plain PUT is one prebuilt upsert statement; replacing a key must still bump the version and
keep the creation time, on both databases."""

from __future__ import annotations

import httpx

from tests.conftest import TokenFactory, bearer, key_path

ALL = "api-key:read api-key:write api-key:delete"


async def test_second_put_replaces_the_key_and_bumps_the_version(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    headers = bearer(token("erin", ALL))
    first = await client.put(
        key_path("erin"), json={"api_key": "sk-erin-first-000001"}, headers=headers
    )

    second = await client.put(
        key_path("erin"), json={"api_key": "sk-erin-second-00002"}, headers=headers
    )

    assert second.status_code == 200
    assert second.json()["version"] == 2
    assert second.json()["created_at"] == first.json()["created_at"]
    assert second.json()["updated_at"] >= first.json()["updated_at"]
    assert second.headers["ETag"] != first.headers["ETag"]
    read = await client.get(key_path("erin"), headers=headers)
    assert read.json()["api_key"] == "sk-erin-second-00002"
    assert read.json()["last4"] == "0002"
    assert read.headers["ETag"] == second.headers["ETag"]
