"""The BOLA matrix: own sub / another user's sub / a service token, each scope, each verb."""

from __future__ import annotations

import itertools

import httpx
import pytest

from tests.conftest import TokenFactory, bearer, key_path

TARGET = "alice"
VERBS = {
    "read": ("GET", ""),
    "status": ("GET", "/status"),
    "write": ("PUT", ""),
    "delete": ("DELETE", ""),
}
SCOPES = ["api-key:read", "api-key:write", "api-key:delete", ""]
CALLERS = {"own": ("alice", ""), "other": ("bob", ""), "service": ("svc-billing", " users:any")}


def allowed(verb: str, scope: str, caller: str) -> bool:
    if caller == "other":
        return False
    if verb == "status":
        return scope != ""
    return scope == f"api-key:{verb}"


async def _call(client: httpx.AsyncClient, verb: str, token_value: str) -> httpx.Response:
    method, suffix = VERBS[verb]
    body = {"api_key": "sk-matrix-000000000000"} if method == "PUT" else None
    return await client.request(
        method, key_path(TARGET, suffix), json=body, headers=bearer(token_value)
    )


async def _give_target_a_key(client: httpx.AsyncClient, token: TokenFactory) -> None:
    response = await client.put(
        key_path(TARGET),
        json={"api_key": "sk-target-0000000000"},
        headers=bearer(token(TARGET, "api-key:write")),
    )
    assert response.status_code in (200, 201)


@pytest.mark.parametrize(
    ("verb", "scope", "caller"), list(itertools.product(VERBS, SCOPES, CALLERS))
)
async def test_access_matrix(
    client: httpx.AsyncClient, token: TokenFactory, verb: str, scope: str, caller: str
) -> None:
    await _give_target_a_key(client, token)
    sub, extra_scope = CALLERS[caller]

    response = await _call(client, verb, token(sub, (scope + extra_scope).strip()))

    if allowed(verb, scope, caller):
        assert response.status_code in (200, 204), response.text
    else:
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "sk-target" not in response.text


@pytest.mark.parametrize("verb", list(VERBS))
async def test_refusal_is_the_same_whether_or_not_the_target_has_a_key(
    client: httpx.AsyncClient, token: TokenFactory, verb: str
) -> None:
    scope = "api-key:read" if verb == "status" else f"api-key:{verb}"
    without_key = await _call(client, verb, token("bob", scope))
    await _give_target_a_key(client, token)
    with_key = await _call(client, verb, token("bob", scope))

    assert without_key.status_code == with_key.status_code == 403
    assert without_key.json() == with_key.json()


async def test_users_any_alone_grants_no_action(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    await _give_target_a_key(client, token)
    response = await _call(client, "read", token("svc-billing", "users:any"))
    assert response.status_code == 403


@pytest.mark.parametrize("verb", list(VERBS))
async def test_no_token_is_401_with_a_bearer_challenge(
    client: httpx.AsyncClient, verb: str
) -> None:
    method, suffix = VERBS[verb]
    response = await client.request(
        method, key_path(TARGET, suffix), json={"api_key": "sk-x-000000000000"}
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not.a.jwt", "Token abc"]
)
async def test_malformed_authorization_is_401(client: httpx.AsyncClient, header: str) -> None:
    response = await client.get(key_path(TARGET), headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
