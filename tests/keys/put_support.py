"""What the PUT tests share: the scopes a writer holds, a key that must never be echoed, and one
PUT as a given user."""

from __future__ import annotations

import httpx

from tests.conftest import TokenFactory, bearer, key_path

WRITE = "api-key:write api-key:read"
CANARY = "sk-CANARY-never-echo-0123456789"


async def put(
    client: httpx.AsyncClient, token: TokenFactory, sub: str, body: object, **headers: str
) -> httpx.Response:
    return await client.put(key_path(sub), json=body, headers=bearer(token(sub, WRITE)) | headers)
