"""What /openapi.json says of the provider proxy is what is served: each status it documents is
one the endpoint gives, each one the endpoint gives is documented, and every documented method
is answered by the proxy (never the router's 404 or a 405)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from keyvault.web.proxy_routes import METHODS, PROXY_ROUTE
from tests.audit_support import execute_sql, new_sub, private_service
from tests.conftest import bearer, mint
from tests.fake_provider import FakeProvider, fake_provider, unreachable_base_url
from tests.fake_provider_answers import HANG
from tests.web.proxy_support import CHAT, PROXY_MAX_BODY, SERVICE_USE, proxy_settings

BUDGET = 3  # requests per caller (the address is unlimited): a fresh caller per probe
PROVIDERS_FILE = """
[providers.gone]
base_url = "{url}"
validation_path = "models"
proxy_paths = ["chat/completions"]
"""


async def _user(http: httpx.AsyncClient, *providers: str) -> str:
    sub = new_sub()
    for provider in providers:
        answer = await http.put(
            f"/users/{quote(sub, safe='')}/api-keys/{provider}",
            json={"api_key": f"sk-documented-{provider}-0123456789"},
            headers=bearer(mint(sub, "api-key:write")),
        )
        assert answer.status_code == 201
    return sub


async def _call(
    http: httpx.AsyncClient,
    sub: str | None,
    path: str = "/proxy/openai/chat/completions",
    scopes: str = SERVICE_USE,
    named: str | None = None,
    **request: Any,
) -> int:
    """One call, by a caller of its own; `named` is X-Keyvault-User as sent (else the sub's)."""
    headers = bearer(mint(f"svc-{new_sub()}", scopes)) if scopes else {}
    if sub is not None or named is not None:
        headers["X-Keyvault-User"] = named or quote(str(sub), safe="")
    request.setdefault("json", CHAT)
    answer = await http.post(path, headers=headers, **request)
    return answer.status_code


async def _produced(http: httpx.AsyncClient, database_url: str) -> set[int]:
    sub = await _user(http, "openai", "gone")
    produced = {
        await _call(http, sub),
        await _call(http, sub, scopes=""),
        await _call(http, sub, scopes="api-key:read users:any"),
        await _call(http, sub, path="/proxy/openai/files"),
        await _call(http, None, named="bad%0Asub"),
        await _call(http, sub, content=b"x" * (PROXY_MAX_BODY + 1)),
        await _call(http, sub, path="/proxy/gone/chat/completions"),
        await _call(http, sub, json={**CHAT, "model": HANG}),
    }
    headers = {**bearer(mint(f"svc-{new_sub()}", SERVICE_USE)), "X-Keyvault-User": sub}
    statuses = [
        (await http.post("/proxy/openai/chat/completions", json=CHAT, headers=headers)).status_code
        for _ in range(BUDGET + 1)
    ]
    produced.add(statuses[-1])
    # A record that fails its integrity check (another user's sealed key on this user's row).
    victim = await _user(http, "openai")
    await execute_sql(
        database_url,
        "UPDATE api_keys SET salt = a.salt, nonce = a.nonce, ciphertext = a.ciphertext"
        " FROM (SELECT salt, nonce, ciphertext FROM api_keys WHERE sub = :owner"
        " AND provider = 'openai') AS a WHERE sub = :victim AND provider = 'openai'",
        owner=sub,
        victim=victim,
    )
    produced.add(await _call(http, victim))
    # A refusal is answered once its event is stored: 503 when the trail cannot store it.
    await execute_sql(database_url, "ALTER TABLE audit_events RENAME TO audit_events_gone")
    try:
        produced.add(await _call(http, sub, path="/proxy/openai/files"))
    finally:
        await execute_sql(database_url, "ALTER TABLE audit_events_gone RENAME TO audit_events")
    return produced


def _documented(schema: dict[str, Any]) -> dict[str, set[int]]:
    return {
        method: {int(code) for code in operation["responses"]}
        for method, operation in schema["paths"][PROXY_ROUTE].items()
    }


async def test_each_documented_proxy_response_is_one_it_gives(backend: str, tmp_path: Path) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS_FILE.format(url=unreachable_base_url()))
    with fake_provider() as fake:
        overrides = proxy_settings(
            fake, rate_limit_service=f"{BUDGET}/hour", providers_file=providers
        )
        async with private_service(backend, tmp_path, **overrides) as vault:
            produced = await _produced(vault.client, vault.database_url)
            documented = _documented(vault.app.openapi())
    assert set(documented) == {method.lower() for method in METHODS}
    for method, statuses in documented.items():
        assert statuses == produced, method


async def test_every_documented_method_is_served_by_the_proxy(backend: str, tmp_path: Path) -> None:
    with fake_provider() as fake:
        async with private_service(backend, tmp_path, **proxy_settings(fake)) as vault:
            sub = await _user(vault.client, "openai")
            headers = {**bearer(mint(f"svc-{new_sub()}", SERVICE_USE)), "X-Keyvault-User": sub}
            for method in (*METHODS, "HEAD", "OPTIONS"):
                answer = await vault.client.request(method, "/proxy/openai/models", headers=headers)
                assert answer.status_code != 405, method
                received = _received(fake)
                assert received[-1] == (method, "/v1/models"), method


def _received(fake: FakeProvider) -> list[tuple[str, str]]:
    return [(seen.method, seen.path) for seen in fake.received]
