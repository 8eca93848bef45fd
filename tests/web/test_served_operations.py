"""What /openapi.json documents is what is served: every documented operation is answered (never
the router's 404 or a 405), each response it documents is one its endpoint gives, and every key
operation served is documented. The key operations are documented by routes that are not mounted
(web.key_routes) and served by web.key_endpoints, so only this test holds the two together."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from keyvault.web.app import KeyvaultApp
from keyvault.web.key_endpoints import SERVED
from tests.audit_support import execute_sql, new_sub, private_service
from tests.conftest import bearer, key_path, mint
from tests.fake_provider import fake_provider
from tests.keys.test_provider_keys import provider_path

ALL = "api-key:read api-key:write api-key:delete"
KEY = "/users/{sub}/api-key"
STATUS = "/users/{sub}/api-key/status"
LIST = "/users/{sub}/api-keys"
PROVIDER_KEY = "/users/{sub}/api-keys/{provider}"
PROVIDER_STATUS = "/users/{sub}/api-keys/{provider}/status"
BODY = {"api_key": "sk-served-0123456789"}
# A caller's budget of requests (the address is unlimited): a fresh user per probe starts afresh.
BUDGET = 3
# Each documented path, as a request for a sub (the provider routes for anthropic's key).
PATHS: dict[str, Callable[[str], str]] = {
    KEY: key_path,
    STATUS: lambda sub: key_path(sub, "/status"),
    LIST: lambda sub: f"/users/{quote(sub, safe='')}/api-keys",
    PROVIDER_KEY: lambda sub: provider_path(sub, "anthropic"),
    PROVIDER_STATUS: lambda sub: provider_path(sub, "anthropic", "/status"),
}

Probe = Callable[[httpx.AsyncClient, str], Awaitable[int]]


def _as(sub: str, scopes: str = ALL) -> dict[str, str]:
    return bearer(mint(sub, scopes))


async def _seeded(http: httpx.AsyncClient, sub: str) -> None:
    for path in (key_path(sub), provider_path(sub, "anthropic")):
        assert (await http.put(path, json=BODY, headers=_as(sub))).status_code == 201


def _plain(method: str, path: str, scopes: str = ALL, **request: Any) -> Probe:
    async def probe(http: httpx.AsyncClient, sub: str) -> int:
        sent = dict(request)
        headers = {**_as(sub, scopes), **sent.pop("headers", {})} if scopes else {}
        url = PATHS[path](sub) if path in PATHS else path.replace("{sub}", sub)
        response = await http.request(method, url, headers=headers, **sent)
        return response.status_code

    return probe


def _after_seeding(probe: Probe) -> Probe:
    async def seeded(http: httpx.AsyncClient, sub: str) -> int:
        await _seeded(http, sub)
        return await probe(http, sub)

    return seeded


def _over_budget(method: str, path: str, **request: Any) -> Probe:
    async def probe(http: httpx.AsyncClient, sub: str) -> int:
        statuses = [
            (await http.request(method, PATHS[path](sub), headers=_as(sub), **request)).status_code
            for _ in range(BUDGET + 1)
        ]
        return statuses[-1]

    return probe


def _invalid_sub(method: str, path: str, **request: Any) -> Probe:
    async def probe(http: httpx.AsyncClient, fresh: str) -> int:
        sub = f"{fresh}\x01"  # a budget of its own, as every probe's sub
        response = await http.request(method, PATHS[path](sub), headers=_as(sub), **request)
        return response.status_code

    return probe


def _too_large(path: str) -> Probe:
    return _plain("PUT", path, json={"api_key": "k" * 20_000})


def _validated(path: str, key: str) -> Probe:
    """A PUT ?validate=true of a key the fake provider answers for in its own way."""
    return _plain("PUT", path, json={"api_key": key}, params={"validate": "true"})


def _key_probes(key: str, unknown: str | None) -> dict[tuple[str, str], list[Probe]]:
    """The probes of a key's GET, PUT and DELETE at `key`; `unknown` names the same path for a
    provider that is not configured (None for the openai key's routes)."""
    get = [
        _after_seeding(_plain("GET", key)),
        _plain("GET", key, scopes=""),
        _plain("GET", key, scopes="api-key:write"),
        _plain("GET", key),
        _invalid_sub("GET", key),
        _over_budget("GET", key),
    ]
    put = [
        _after_seeding(_plain("PUT", key, json=BODY)),
        _plain("PUT", key, json=BODY),
        _plain("PUT", key, scopes="", json=BODY),
        _plain("PUT", key, scopes="api-key:read", json=BODY),
        _after_seeding(_plain("PUT", key, json=BODY, headers={"If-None-Match": "*"})),
        _too_large(key),
        _plain("PUT", key, json={"api_key": ""}),
        _over_budget("PUT", key, json=BODY),
        _validated(key, "sk-broken-0123456789"),
        _validated(key, "sk-slow-0123456789"),
    ]
    delete = [
        _after_seeding(_plain("DELETE", key)),
        _plain("DELETE", key, scopes=""),
        _plain("DELETE", key, scopes="api-key:read"),
        _plain("DELETE", key),
        _invalid_sub("DELETE", key),
        _over_budget("DELETE", key),
    ]
    if unknown is not None:
        put.append(_plain("PUT", unknown, json=BODY))
    return {("get", key): get, ("put", key): put, ("delete", key): delete}


def _status_probes(status: str, unknown: str | None) -> list[Probe]:
    probes = [
        _plain("GET", status),
        _plain("GET", status, scopes=""),
        _plain("GET", status, scopes="audit:read"),
        _invalid_sub("GET", status),
        _over_budget("GET", status),
    ]
    return [*probes, _plain("GET", unknown)] if unknown is not None else probes


PROBES: dict[tuple[str, str], list[Probe]] = {
    **_key_probes(KEY, None),
    **_key_probes(PROVIDER_KEY, "/users/{sub}/api-keys/nobody"),
    ("get", STATUS): _status_probes(STATUS, None),
    ("get", PROVIDER_STATUS): _status_probes(
        PROVIDER_STATUS, "/users/{sub}/api-keys/nobody/status"
    ),
    ("get", LIST): [
        _plain("GET", LIST),
        _plain("GET", LIST, scopes=""),
        _plain("GET", LIST, scopes="audit:read"),
        _invalid_sub("GET", LIST),
        _over_budget("GET", LIST),
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
    # (Each user has a budget of three requests: two seed its keys, the third reads.)
    owner, victim, moved = new_sub(), new_sub(), new_sub()
    for sub in (owner, victim, moved):
        await _seeded(http, sub)
    # The owner's sealed key on the victim's row, and a user's openai key on their anthropic
    # slot: neither may ever open.
    await execute_sql(
        url,
        "UPDATE api_keys SET salt = a.salt, nonce = a.nonce, ciphertext = a.ciphertext"
        " FROM (SELECT salt, nonce, ciphertext FROM api_keys WHERE sub = :owner"
        " AND provider = 'openai') AS a WHERE sub = :victim AND provider = 'openai'",
        owner=owner,
        victim=victim,
    )
    await execute_sql(
        url,
        "UPDATE api_keys SET format_version = a.format_version, key_id = a.key_id,"
        " salt = a.salt, nonce = a.nonce, ciphertext = a.ciphertext"
        " FROM (SELECT format_version, key_id, salt, nonce, ciphertext FROM api_keys"
        " WHERE sub = :moved AND provider = 'openai') AS a"
        " WHERE sub = :moved AND provider = 'anthropic'",
        moved=moved,
    )
    for path, sub in ((KEY, victim), (PROVIDER_KEY, moved)):
        answer = await http.get(PATHS[path](sub), headers=_as(sub))
        produced[("get", path)].add(answer.status_code)
    subs = {operation: new_sub() for operation in PROBES}
    for (method, _), sub in subs.items():
        if method != "put":
            await _seeded(http, sub)
    await execute_sql(url, "ALTER TABLE audit_events RENAME TO audit_events_gone")
    try:
        for (method, path), sub in subs.items():
            response = await http.request(
                method.upper(),
                PATHS[path](sub),
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
    with fake_provider() as fake:
        providers = {
            "openai_base_url": f"{fake.base_url}/v1",
            "anthropic_base_url": fake.base_url,
            "provider_timeout": 0.3,
        }
        async with private_service(backend, tmp_path, **limits, **providers) as vault:
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
        url = path.replace("{sub}", "alice").replace("{provider}", "anthropic")
        response = await client.request(
            method.upper(), url, headers=headers, json=BODY if method == "put" else None
        )
        assert response.status_code != 405, (method, path)
        if response.headers.get("content-type") == "application/problem+json":
            assert response.json()["type"] != "https://keyvault.dev/problems/http-404", path
        if method == "get":  # and HEAD as the GET it stands for
            head = await client.head(url, headers=headers)
            assert (head.status_code, head.content) == (response.status_code, b"")
