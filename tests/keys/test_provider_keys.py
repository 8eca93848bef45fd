"""Keys per provider over HTTP: `/users/{sub}/api-keys/{provider}` behaves as `/users/{sub}/api-key`
does, which is the openai key; keys of different providers are apart; the list shows statuses;
a provider not configured is 404."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest

from keyvault.config import Settings
from tests.audit_support import new_sub, stored_events
from tests.conftest import TokenFactory, bearer, key_path, mint

ALL = "api-key:read api-key:write api-key:delete"
PROBLEMS = "https://keyvault.dev/problems/"


def provider_path(sub: str, provider: str, suffix: str = "") -> str:
    return f"/users/{quote(sub, safe='')}/api-keys/{provider}{suffix}"


def as_(sub: str, scopes: str = ALL) -> dict[str, str]:
    return bearer(mint(sub, scopes))


async def _put(client: httpx.AsyncClient, path: str, sub: str, **body: Any) -> httpx.Response:
    return await client.put(path, json=body, headers=as_(sub))


async def test_a_provider_key_is_stored_read_listed_and_deleted(
    client: httpx.AsyncClient,
) -> None:
    path = provider_path("alice", "anthropic")
    created = await _put(client, path, "alice", api_key="sk-ant-alice-0123456789")
    assert created.status_code == 201
    assert created.json()["provider"] == "anthropic"
    assert created.json()["version"] == 1

    read = await client.get(path, headers=as_("alice"))
    assert read.status_code == 200
    assert read.headers["cache-control"] == "no-store"
    assert read.headers["etag"] == created.headers["etag"]
    assert read.json() | {"provider": "anthropic", "api_key": "sk-ant-alice-0123456789"} == (
        read.json()
    )
    status = await client.get(provider_path("alice", "anthropic", "/status"), headers=as_("alice"))
    assert status.json() == created.json()
    assert status.headers["etag"] == created.headers["etag"]

    assert (await client.delete(path, headers=as_("alice"))).status_code == 204
    gone = await client.get(path, headers=as_("alice"))
    assert (gone.status_code, gone.json()["type"]) == (404, PROBLEMS + "not-found")


async def test_the_api_key_routes_are_the_openai_key(client: httpx.AsyncClient) -> None:
    written = await _put(client, key_path("bob"), "bob", api_key="sk-bob-legacy-0123456789")
    through_provider = await client.get(provider_path("bob", "openai"), headers=as_("bob"))
    assert through_provider.json()["api_key"] == "sk-bob-legacy-0123456789"
    assert through_provider.headers["etag"] == written.headers["etag"]

    replaced = await _put(client, provider_path("bob", "openai"), "bob", api_key="sk-bob-new-01234")
    assert replaced.status_code == 200
    legacy = await client.get(key_path("bob"), headers=as_("bob"))
    assert (legacy.json()["api_key"], legacy.json()["version"]) == ("sk-bob-new-01234", 2)
    legacy_status = await client.get(key_path("bob", "/status"), headers=as_("bob"))
    status = await client.get(provider_path("bob", "openai", "/status"), headers=as_("bob"))
    assert legacy_status.json() == status.json()

    assert (await client.delete(key_path("bob"), headers=as_("bob"))).status_code == 204
    after = await client.get(provider_path("bob", "openai"), headers=as_("bob"))
    assert after.status_code == 404


async def test_each_providers_key_is_its_own(client: httpx.AsyncClient) -> None:
    await _put(client, provider_path("carol", "openai"), "carol", api_key="sk-carol-openai-0001")
    await _put(client, provider_path("carol", "anthropic"), "carol", api_key="sk-carol-ant-00002")
    for provider, key in (("openai", "sk-carol-openai-0001"), ("anthropic", "sk-carol-ant-00002")):
        read = await client.get(provider_path("carol", provider), headers=as_("carol"))
        assert (read.json()["api_key"], read.json()["version"]) == (key, 1)

    await client.delete(provider_path("carol", "openai"), headers=as_("carol"))
    kept = await client.get(provider_path("carol", "anthropic"), headers=as_("carol"))
    assert kept.json()["api_key"] == "sk-carol-ant-00002"


async def test_the_list_shows_each_key_as_a_status_never_the_key(
    client: httpx.AsyncClient,
) -> None:
    await _put(client, provider_path("dave", "openai"), "dave", api_key="sk-CANARY-dave-01")
    await _put(
        client,
        provider_path("dave", "anthropic"),
        "dave",
        api_key="sk-CANARY-dave-02-abcdef",
        label="work",
        expires_at="2999-01-01T00:00:00+01:00",
    )
    listed = await client.get("/users/dave/api-keys", headers=as_("dave", "api-key:read"))
    assert listed.status_code == 200
    assert "CANARY" not in listed.text
    body = listed.json()
    assert body["sub"] == "dave"
    assert [(k["provider"], k["last4"], k["label"], k["expired"]) for k in body["keys"]] == [
        ("anthropic", "cdef", "work", False),
        ("openai", "e-01", None, False),
    ]
    assert body["keys"][0]["expires_at"] == "2998-12-31T23:00:00Z"
    assert set(body["keys"][0]) == {
        "sub",
        "provider",
        "has_api_key",
        "last4",
        "label",
        "created_at",
        "updated_at",
        "expires_at",
        "expired",
        "version",
    }
    nobody = await client.get("/users/nobody/api-keys", headers=as_("nobody", "api-key:delete"))
    assert nobody.json() == {"sub": "nobody", "keys": []}


@pytest.mark.parametrize(
    ("path", "scopes", "status"),
    [
        ("/users/erin/api-keys", "audit:read", 403),
        ("/users/frank/api-keys", ALL, 403),
        ("/users/frank/api-keys/anthropic", ALL, 403),
        ("/users/frank/api-keys/anthropic/status", ALL, 403),
        ("/users/frank/api-keys", f"{ALL} users:any", 200),
        ("/users/erin/api-keys/anthropic", "api-key:write", 403),
    ],
)
async def test_provider_routes_check_scopes_as_the_key_routes_do(
    client: httpx.AsyncClient, path: str, scopes: str, status: int
) -> None:
    response = await client.get(path, headers=as_("erin", scopes))
    assert response.status_code == status


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("provider", ["nobody", "Open%20AI", "status", "access-log"])
async def test_a_provider_not_configured_is_404_and_audited(
    client: httpx.AsyncClient, method: str, provider: str
) -> None:
    sub = new_sub()
    for suffix in ("", "/status") if method == "GET" else ("",):
        response = await client.request(
            method,
            provider_path(sub, provider, suffix),
            headers=as_(sub),
            json={"api_key": "sk-CANARY-0123456789"} if method == "PUT" else None,
        )
        assert response.status_code == 404, provider
        assert response.json()["type"] == PROBLEMS + "unknown-provider"
        assert response.json()["detail"] == "No provider of that name is configured."
        assert "CANARY" not in response.text


async def test_unknown_provider_events_name_what_was_asked(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    sub = new_sub()
    await client.get(provider_path(sub, "nobody"), headers=as_(sub))
    (event,) = await stored_events(settings.database_url.get_secret_value(), sub)
    assert (event.event.action, event.event.outcome, event.event.provider) == (
        "get",
        "not_found",
        "nobody",
    )


async def test_events_name_the_provider_and_the_list_none(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    sub = new_sub()
    await _put(client, provider_path(sub, "anthropic"), sub, api_key="sk-events-0123456789")
    await client.get(key_path(sub), headers=as_(sub))
    await client.get(f"/users/{quote(sub, safe='')}/api-keys", headers=as_(sub))
    events = await stored_events(settings.database_url.get_secret_value(), sub)
    assert [(e.event.action, e.event.outcome, e.event.provider) for e in events] == [
        ("put", "ok", "anthropic"),
        ("get", "not_found", "openai"),
        ("list", "ok", None),
    ]
    log = await client.get(f"/users/{quote(sub, safe='')}/api-key/access-log", headers=as_(sub))
    assert [(e["action"], e["provider"]) for e in log.json()["events"]] == [
        ("list", None),
        ("get", "openai"),
        ("put", "anthropic"),
    ]


@pytest.mark.parametrize(
    ("path", "method", "allow"),
    [
        ("/users/gina/api-keys", "PUT", "GET, HEAD"),
        ("/users/gina/api-keys/anthropic", "PATCH", "GET, HEAD, PUT, DELETE"),
        ("/users/gina/api-keys/anthropic/status", "DELETE", "GET, HEAD"),
    ],
)
async def test_a_method_a_provider_path_does_not_serve_is_405(
    client: httpx.AsyncClient, path: str, method: str, allow: str
) -> None:
    response = await client.request(method, path, headers=as_("gina"))
    assert (response.status_code, response.headers["allow"]) == (405, allow)


@pytest.mark.parametrize(
    "path",
    ["/users/gina/api-keys/", "/users/gina/api-keys/anthropic/", "/users/gina/api-keys/x/status/"],
)
async def test_a_trailing_slash_redirects_to_the_path_without_it(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path, headers=as_("gina"))
    assert response.status_code == 307
    assert response.headers["location"] == f"http://keyvault.test{path.rstrip('/')}"


async def test_a_sub_may_hold_what_looks_like_a_provider_path(client: httpx.AsyncClient) -> None:
    sub = "tenant/api-keys/openai"
    await _put(client, provider_path(sub, "anthropic"), sub, api_key="sk-nested-0123456789")
    read = await client.get(provider_path(sub, "anthropic"), headers=as_(sub))
    assert (read.json()["sub"], read.json()["provider"]) == (sub, "anthropic")
    other = await client.get(provider_path("tenant", "openai"), headers=as_("tenant"))
    assert other.status_code == 404


async def test_head_on_a_provider_key_is_the_get_without_its_body(
    client: httpx.AsyncClient,
) -> None:
    await _put(client, provider_path("hal", "anthropic"), "hal", api_key="sk-hal-0123456789")
    get = await client.get(provider_path("hal", "anthropic"), headers=as_("hal"))
    head = await client.head(provider_path("hal", "anthropic"), headers=as_("hal"))
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["etag"] == get.headers["etag"]
    assert head.headers["content-length"] == get.headers["content-length"]


async def test_a_provider_key_is_refused_on_a_bad_sub_as_the_key_routes_are(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    response = await client.get(
        "/users/a%01b/api-keys/anthropic", headers=bearer(token("a\x01b", ALL))
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "path.sub: Value error, must not contain control characters"
