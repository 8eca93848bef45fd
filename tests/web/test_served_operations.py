"""What /openapi.json documents is what is served: every documented operation is answered (never
the router's 404 or a 405), each response it documents is one its endpoint gives, and every key
operation served is documented. The key operations are documented by routes that are not mounted
(web.key_routes) and served by web.key_endpoints, so only this test holds the two together."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from keyvault.web.app import KeyvaultApp
from keyvault.web.key_endpoints import SERVED
from tests.audit_support import execute_sql, new_sub, private_service
from tests.conftest import bearer, key_path, mint

ALL = "api-key:read api-key:write api-key:delete"
KEY = "/users/{sub}/api-key"
STATUS = "/users/{sub}/api-key/status"
BODY = {"api_key": "sk-served-0123456789"}
# A caller's budget of requests (the address is unlimited): a fresh user per probe starts afresh.
BUDGET = 3

Probe = Callable[[httpx.AsyncClient, str], Awaitable[int]]


def _as(sub: str, scopes: str = ALL) -> dict[str, str]:
    return bearer(mint(sub, scopes))


async def _seeded(http: httpx.AsyncClient, sub: str) -> None:
    assert (await http.put(key_path(sub), json=BODY, headers=_as(sub))).status_code == 201


def _plain(method: str, suffix: str, scopes: str = ALL, **request: Any) -> Probe:
    async def probe(http: httpx.AsyncClient, sub: str) -> int:
        sent = dict(request)
        headers = {**_as(sub, scopes), **sent.pop("headers", {})} if scopes else {}
        response = await http.request(method, key_path(sub, suffix), headers=headers, **sent)
        return response.status_code

    return probe


def _after_seeding(probe: Probe) -> Probe:
    async def seeded(http: httpx.AsyncClient, sub: str) -> int:
        await _seeded(http, sub)
        return await probe(http, sub)

    return seeded


def _over_budget(method: str, suffix: str, **request: Any) -> Probe:
    async def probe(http: httpx.AsyncClient, sub: str) -> int:
        statuses = [
            (
                await http.request(method, key_path(sub, suffix), headers=_as(sub), **request)
            ).status_code
            for _ in range(BUDGET + 1)
        ]
        return statuses[-1]

    return probe


def _invalid_sub(method: str, suffix: str, **request: Any) -> Probe:
    async def probe(http: httpx.AsyncClient, _sub: str) -> int:
        sub = "a\x01b"
        response = await http.request(
            method, f"/users/a%01b/api-key{suffix}", headers=_as(sub), **request
        )
        return response.status_code

    return probe


def _too_large(http: httpx.AsyncClient, sub: str) -> Awaitable[int]:
    return _plain("PUT", "", json={"api_key": "k" * 20_000})(http, sub)


PROBES: dict[tuple[str, str], list[Probe]] = {
    ("get", KEY): [
        _after_seeding(_plain("GET", "")),
        _plain("GET", "", scopes=""),
        _plain("GET", "", scopes="api-key:write"),
        _plain("GET", ""),
        _invalid_sub("GET", ""),
        _over_budget("GET", ""),
    ],
    ("put", KEY): [
        _after_seeding(_plain("PUT", "", json=BODY)),
        _plain("PUT", "", json=BODY),
        _plain("PUT", "", scopes="", json=BODY),
        _plain("PUT", "", scopes="api-key:read", json=BODY),
        _after_seeding(_plain("PUT", "", json=BODY, headers={"If-None-Match": "*"})),
        _too_large,
        _plain("PUT", "", json={"api_key": ""}),
        _over_budget("PUT", "", json=BODY),
    ],
    ("delete", KEY): [
        _after_seeding(_plain("DELETE", "")),
        _plain("DELETE", "", scopes=""),
        _plain("DELETE", "", scopes="api-key:read"),
        _plain("DELETE", ""),
        _invalid_sub("DELETE", ""),
        _over_budget("DELETE", ""),
    ],
    ("get", STATUS): [
        _plain("GET", "/status"),
        _plain("GET", "/status", scopes=""),
        _plain("GET", "/status", scopes="audit:read"),
        _invalid_sub("GET", "/status"),
        _over_budget("GET", "/status"),
    ],
}


def _documented(app: KeyvaultApp) -> dict[tuple[str, str], set[int]]:
    return {
        (method, path): {int(code) for code in operation["responses"]}
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
    }


async def _produced(app: KeyvaultApp, http: httpx.AsyncClient, url: str) -> dict[Any, set[int]]:
    produced: dict[tuple[str, str], set[int]] = defaultdict(set)
    for operation, probes in PROBES.items():
        for probe in probes:
            produced[operation].add(await probe(http, new_sub()))
    # The two refusals no request can provoke on a healthy service: a stored key that fails its
    # integrity check (500), and an audit trail that cannot record (503).
    owner, victim = new_sub(), new_sub()
    await _seeded(http, owner)
    await _seeded(http, victim)
    # The owner's sealed key on the victim's row: it must never open as the victim's.
    await execute_sql(
        url,
        "UPDATE api_keys SET salt = a.salt, nonce = a.nonce, ciphertext = a.ciphertext"
        " FROM (SELECT salt, nonce, ciphertext FROM api_keys WHERE sub = :owner) AS a"
        " WHERE sub = :victim",
        owner=owner,
        victim=victim,
    )
    produced[("get", KEY)].add((await http.get(key_path(victim), headers=_as(victim))).status_code)
    subs = {operation: new_sub() for operation in PROBES}
    for (method, _), sub in subs.items():
        if method != "put":
            await _seeded(http, sub)
    await execute_sql(url, "ALTER TABLE audit_events RENAME TO audit_events_gone")
    try:
        for (method, path), sub in subs.items():
            suffix = "/status" if path == STATUS else ""
            response = await http.request(
                method.upper(),
                key_path(sub, suffix),
                headers=_as(sub),
                json=BODY if method == "put" else None,
            )
            produced[(method, path)].add(response.status_code)
    finally:
        await execute_sql(url, "ALTER TABLE audit_events_gone RENAME TO audit_events")
    return produced


async def test_each_documented_key_response_is_one_its_endpoint_gives(
    backend: str, tmp_path: Path
) -> None:
    limits = {"rate_limit": f"{BUDGET}/hour", "rate_limit_per_address": ""}
    async with private_service(backend, tmp_path, **limits) as vault:
        produced = await _produced(vault.app, vault.client, vault.database_url)
        documented = _documented(vault.app)
    for operation in PROBES:
        assert documented[operation] == produced[operation], operation


def test_every_served_key_operation_is_documented_and_every_documented_one_served(
    app: KeyvaultApp,
) -> None:
    documented = {
        f"{method.upper()} {path}"
        for method, path in _documented(app)
        if path.startswith("/users/") and not path.endswith("/access-log")
    }
    assert documented == set(SERVED)


async def test_every_documented_operation_is_answered_by_what_serves_it(
    app: KeyvaultApp, client: httpx.AsyncClient
) -> None:
    headers = _as("alice", f"{ALL} audit:read")
    for method, path in _documented(app):
        url = path.replace("{sub}", "alice")
        response = await client.request(
            method.upper(), url, headers=headers, json=BODY if method == "put" else None
        )
        assert response.status_code != 405, (method, path)
        if response.headers.get("content-type") == "application/problem+json":
            assert response.json()["type"] != "https://keyvault.dev/problems/http-404", path
        if method == "get":  # and HEAD as the GET it stands for
            head = await client.head(url, headers=headers)
            assert (head.status_code, head.content) == (response.status_code, b"")
