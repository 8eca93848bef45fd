from __future__ import annotations

import httpx
import pytest

from tests.conftest import TokenFactory, bearer, key_path

ALL = "api-key:read api-key:write api-key:delete"


async def test_status_without_a_key_is_200_with_nulls(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    response = await client.get(
        key_path("alice", "/status"), headers=bearer(token("alice", "api-key:read"))
    )
    assert response.status_code == 200
    assert response.json() == {
        "sub": "alice",
        "provider": "openai",
        "has_api_key": False,
        "last4": None,
        "label": None,
        "created_at": None,
        "updated_at": None,
        "expires_at": None,
        "expired": False,
        "version": None,
    }


@pytest.mark.parametrize("scope", ["api-key:read", "api-key:write", "api-key:delete"])
async def test_status_is_allowed_with_any_api_key_scope(
    client: httpx.AsyncClient, token: TokenFactory, scope: str
) -> None:
    await client.put(
        key_path("alice"),
        json={"api_key": "sk-alice-0000000000001"},
        headers=bearer(token("alice", ALL)),
    )
    response = await client.get(key_path("alice", "/status"), headers=bearer(token("alice", scope)))
    assert response.status_code == 200
    assert response.json() | {"has_api_key": True, "last4": "0001", "version": 1} == response.json()
    assert "api_key" not in response.json()


async def test_delete_removes_the_key(client: httpx.AsyncClient, token: TokenFactory) -> None:
    await client.put(
        key_path("alice"),
        json={"api_key": "sk-alice-0000000000001"},
        headers=bearer(token("alice", ALL)),
    )

    response = await client.delete(
        key_path("alice"), headers=bearer(token("alice", "api-key:delete"))
    )

    assert response.status_code == 204
    assert response.content == b""
    read = await client.get(key_path("alice"), headers=bearer(token("alice", ALL)))
    assert read.status_code == 404


async def test_deleting_a_missing_key_is_404(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    response = await client.delete(
        key_path("alice"), headers=bearer(token("alice", "api-key:delete"))
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_recreated_key_starts_again_at_version_one(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    for value in ("sk-one-00000000000000", "sk-two-00000000000000"):
        await client.put(
            key_path("alice"), json={"api_key": value}, headers=bearer(token("alice", ALL))
        )
    await client.delete(key_path("alice"), headers=bearer(token("alice", ALL)))
    response = await client.put(
        key_path("alice"),
        json={"api_key": "sk-three-000000000000"},
        headers=bearer(token("alice", ALL)),
    )
    assert (response.status_code, response.json()["version"]) == (201, 1)
