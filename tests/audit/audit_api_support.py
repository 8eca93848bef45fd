"""What the GET /audit tests share: the scopes, a short history of events about one sub, and one
search as an auditor."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import TokenFactory, bearer, key_path

ALL = "api-key:read api-key:write api-key:delete"
AUDITOR = "audit:read"


async def make_history(client: httpx.AsyncClient, token: TokenFactory, sub: str) -> None:
    """Five events about `sub`: put, get, status by the owner; a refused read; a delete."""
    owner = bearer(token(sub, ALL))
    await client.put(key_path(sub), json={"api_key": "sk-0123456789abcdef"}, headers=owner)
    await client.get(key_path(sub), headers=owner)
    await client.get(key_path(sub, "/status"), headers=owner)
    await client.get(key_path(sub), headers=bearer(token(f"{sub}-intruder", ALL)))
    await client.delete(key_path(sub), headers=owner)


async def search(client: httpx.AsyncClient, token: TokenFactory, **params: Any) -> dict[str, Any]:
    response = await client.get("/audit", params=params, headers=bearer(token("auditor", AUDITOR)))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
