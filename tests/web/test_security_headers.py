"""Headers on every response: `nosniff` always; `no-store` on everything that carries a key."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import TokenFactory, bearer, key_path

ALL = "api-key:read api-key:write api-key:delete"


async def test_key_read_is_never_stored(client: httpx.AsyncClient, token: TokenFactory) -> None:
    headers = bearer(token("alice", ALL))
    await client.put(
        key_path("alice"), json={"api_key": "sk-cache-0123456789abcdef"}, headers=headers
    )
    read = await client.get(key_path("alice"), headers=headers)
    assert read.status_code == 200
    assert read.headers["Cache-Control"] == "no-store"


async def test_key_writes_are_never_stored(client: httpx.AsyncClient, token: TokenFactory) -> None:
    headers = bearer(token("alice", ALL))
    created = await client.put(
        key_path("alice"), json={"api_key": "sk-cache-0123456789abcdef"}, headers=headers
    )
    replaced = await client.put(
        key_path("alice"), json={"api_key": "sk-cache-fedcba9876543210"}, headers=headers
    )
    assert (created.status_code, replaced.status_code) == (201, 200)
    assert created.headers["Cache-Control"] == replaced.headers["Cache-Control"] == "no-store"


async def test_status_delete_and_errors_are_never_stored(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    headers = bearer(token("alice", ALL))
    await client.put(
        key_path("alice"), json={"api_key": "sk-cache-0123456789abcdef"}, headers=headers
    )
    responses = [
        await client.get(key_path("alice", "/status"), headers=headers),
        await client.delete(key_path("alice"), headers=headers),
        await client.get(key_path("alice"), headers=headers),
        await client.get(key_path("alice")),
        await client.get(key_path("bob"), headers=headers),
        await client.put(key_path("alice"), content=b"{", headers=headers),
    ]
    assert [response.status_code for response in responses] == [200, 204, 404, 401, 403, 422]
    assert {response.headers["Cache-Control"] for response in responses} == {"no-store"}


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs", "/nowhere"])
async def test_every_response_forbids_content_sniffing(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_response_with_its_own_cache_policy_keeps_it(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs/static/swagger-ui.css")
    assert response.headers.get_list("Cache-Control") == ["public, max-age=86400"]
