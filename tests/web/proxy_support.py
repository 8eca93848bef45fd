"""Helpers for the provider proxy's tests: the service pointed at a fake provider, users with keys,
and the tokens that call through it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx

from keyvault.crypto.records import Keyring
from keyvault.web.app import KeyvaultApp, create_app
from tests.audit_support import new_sub
from tests.conftest import bearer, make_settings, mint
from tests.fake_provider import FakeProvider

# Keys that look like the real ones, long enough to be told from anything else in an answer.
OPENAI_KEY = "sk-proj-CANARY0openai0key0123456789abcdefghijklmnopqrstuv"
ANTHROPIC_KEY = "sk-ant-api03-CANARY0anthropic0key0123456789abcdefghijkl"
KEYS = {"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY}
WRITE = "api-key:write"
USE = "api-key:use"
SERVICE_USE = "api-key:use users:any"
PROXY_TIMEOUT = 1.0
PROXY_MAX_BODY = 64 * 1024
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def proxy_settings(fake: FakeProvider, **overrides: Any) -> dict[str, Any]:
    """The settings that point the built-in providers at `fake` (no address rate limit)."""
    return {
        "openai_base_url": f"{fake.base_url}/v1",
        "anthropic_base_url": fake.base_url,
        "proxy_timeout": PROXY_TIMEOUT,
        "proxy_max_body_bytes": PROXY_MAX_BODY,
        "rate_limit_per_address": "",
        **overrides,
    }


@asynccontextmanager
async def proxy_service(
    database_url: str, keyring: Keyring, fake: FakeProvider, **overrides: Any
) -> AsyncIterator[tuple[KeyvaultApp, httpx.AsyncClient]]:
    """The service over the run's database, its providers at `fake`, served over ASGI."""
    app = create_app(make_settings(database_url, **proxy_settings(fake, **overrides)), keyring)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://keyvault.test") as http:
            yield app, http


def user_header(sub: str) -> dict[str, str]:
    return {"X-Keyvault-User": quote(sub, safe="")}


def as_service(sub: str, scopes: str = SERVICE_USE) -> dict[str, str]:
    """A service token's headers (a service of its own, so a budget of its own), naming `sub`."""
    return {**bearer(mint(f"svc-{new_sub()}", scopes)), **user_header(sub)}


async def user_with_keys(
    http: httpx.AsyncClient, providers: tuple[str, ...] = ("openai", "anthropic"), **body: Any
) -> str:
    """A new user holding the canary key of each of `providers`."""
    sub = new_sub()
    for provider in providers:
        path = f"/users/{quote(sub, safe='')}/api-keys/{provider}"
        answer = await http.put(
            path, json={"api_key": KEYS[provider], **body}, headers=bearer(mint(sub, WRITE))
        )
        assert answer.status_code == 201, answer.text
    return sub
