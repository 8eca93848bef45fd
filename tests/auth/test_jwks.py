"""The identity provider's key set, served by a real local HTTP server: rollover, a provider that
fails, one that hangs, and a flood of made-up key ids."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keyvault.auth.jwks import UNKNOWN_KID_BURST, JwksCache
from keyvault.auth.tokens import TokenVerifier
from keyvault.crypto.records import Keyring
from keyvault.web.app import create_app
from tests.audit_support import new_sub, stored_events
from tests.conftest import AUDIENCE, ISSUER, bearer, key_path, make_settings, mint
from tests.identity_provider import IdentityProvider, jwks_of, running_provider

OLD_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NEW_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ALL = "api-key:read api-key:write"
DEADLINE_SECONDS = 5.0


def provider_token(sub: str, key: Any, kid: str) -> str:
    now = int(time.time())
    claims = {
        "sub": sub,
        "scope": ALL,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,  # each token its own: none is answered from the verified cache
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})


@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    with running_provider(jwks_of({"old": OLD_KEY})) as running:
        yield running


@pytest.fixture
def start_app(database_url: str, keyring: Keyring) -> Any:
    @asynccontextmanager
    async def running(jwks_url: str) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(make_settings(database_url, jwks_url=jwks_url), keyring=keyring)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as client:
                yield client

    return running


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def _poll(condition: Any) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _put_key(client: httpx.AsyncClient, sub: str) -> None:
    response = await client.put(
        key_path(sub), json={"api_key": "sk-rollover-0123456789"}, headers=bearer(mint(sub, ALL))
    )
    assert response.status_code == 201


async def test_a_token_signed_with_the_providers_new_key_is_accepted_at_once(
    provider: IdentityProvider, start_app: Any
) -> None:
    sub = new_sub()
    async with start_app(provider.url) as client:
        await _put_key(client, sub)
        before = await client.get(
            key_path(sub), headers=bearer(provider_token(sub, OLD_KEY, "old"))
        )
        provider.key_set = jwks_of({"old": OLD_KEY, "new": NEW_KEY})
        token = provider_token(sub, NEW_KEY, "new")
        read = await client.get(key_path(sub), headers=bearer(token))
        status = await client.get(key_path(sub, "/status"), headers=bearer(token))
        put = await client.put(
            key_path(sub), json={"api_key": "sk-rollover-9876543210"}, headers=bearer(token)
        )

    assert (before.status_code, read.status_code, status.status_code) == (200, 200, 200)
    assert put.status_code == 200
    assert provider.requests == 2  # the first fetch, and one for the new kid


async def test_a_flood_of_made_up_key_ids_refetches_the_key_set_only_a_few_times(
    provider: IdentityProvider, start_app: Any
) -> None:
    async with start_app(provider.url) as client:
        statuses = [
            (
                await client.get(
                    key_path("alice"), headers=bearer(provider_token("alice", OLD_KEY, f"kid-{n}"))
                )
            ).status_code
            for n in range(30)
        ]

    assert statuses == [401] * 30
    assert provider.requests <= UNKNOWN_KID_BURST


async def test_while_the_key_set_cannot_be_fetched_the_answer_is_503_and_is_logged_safely(
    provider: IdentityProvider,
    start_app: Any,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # keyvault's own lines; libraries stay at WARNING, as `keyvault serve` holds them (httpx logs
    # each request's URL at INFO).
    caplog.set_level(logging.INFO, logger="keyvault")
    provider.status = 500
    port = provider.url.split(":")[2].split("/")[0]
    url = f"http://svc:canary-password@127.0.0.1:{port}/jwks.json?secret=canary-query"
    sub = new_sub()
    token = provider_token(sub, OLD_KEY, "old")
    async with start_app(url) as client:
        read = await client.get(key_path(sub), headers=bearer(token))
        put = await client.put(
            key_path(sub), json={"api_key": "sk-unavailable-0123456789"}, headers=bearer(token)
        )

    for response in (read, put):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/key-set-unavailable")
        assert int(response.headers["retry-after"]) >= 1
    events = await stored_events(database_url, sub)
    assert [(e.event.action, e.event.outcome) for e in events] == [
        ("get", "error"),
        ("put", "error"),
    ]
    failures = [r for r in caplog.records if r.__dict__.get("event") == "jwks_fetch_failed"]
    assert failures
    assert {(r.levelno, r.__dict__["error"]) for r in failures} == {
        (logging.WARNING, "HTTPStatusError")
    }
    access = [r for r in caplog.records if r.name == "keyvault.access"]
    assert [r.__dict__.get("reason") for r in access] == ["key_set_unavailable"] * 2
    logged = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    for secret in ("canary-password", "canary-query", token):
        assert secret not in logged


async def test_known_keys_keep_serving_while_a_refresh_fails(
    provider: IdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    jwks = JwksCache(provider.url, ttl_seconds=300, clock=clock)
    verifier = TokenVerifier(make_settings("sqlite+aiosqlite:///unused.db"), jwks)
    try:
        await verifier.verify(provider_token("alice", OLD_KEY, "old"))
        provider.status = 500
        clock.now += 301

        first = await verifier.verify(provider_token("alice", OLD_KEY, "old"))
        await _poll(
            lambda: any(r.__dict__.get("event") == "jwks_fetch_failed" for r in caplog.records)
        )
        second = await verifier.verify(provider_token("alice", OLD_KEY, "old"))
    finally:
        await jwks.aclose()

    assert first.sub == second.sub == "alice"
    assert provider.requests == 2  # the failure is retried later, not on every request


async def test_a_hanging_provider_never_delays_a_token_whose_key_is_known(
    provider: IdentityProvider,
) -> None:
    clock = Clock()
    jwks = JwksCache(provider.url, ttl_seconds=300, clock=clock)
    verifier = TokenVerifier(make_settings("sqlite+aiosqlite:///unused.db"), jwks)
    try:
        await verifier.verify(provider_token("alice", OLD_KEY, "old"))
        provider.hang()
        clock.now += 301

        principal = await asyncio.wait_for(
            verifier.verify(provider_token("alice", OLD_KEY, "old")), timeout=1.0
        )
        await _poll(lambda: provider.requests == 2)  # the refresh went out, in the background
        provider.release()
    finally:
        await jwks.aclose()

    assert principal.sub == "alice"


async def test_a_refresh_in_the_background_drops_a_key_the_provider_removed(
    provider: IdentityProvider,
) -> None:
    clock = Clock()
    jwks = JwksCache(provider.url, ttl_seconds=300, clock=clock)
    verifier = TokenVerifier(make_settings("sqlite+aiosqlite:///unused.db"), jwks)
    try:
        await verifier.verify(provider_token("alice", OLD_KEY, "old"))
        provider.key_set = jwks_of({"new": NEW_KEY})
        clock.now += 301
        await verifier.verify(provider_token("alice", OLD_KEY, "old"))  # starts the refresh
        await _poll(lambda: provider.requests == 2)

        async def refused() -> bool:
            try:
                await verifier.verify(provider_token("alice", OLD_KEY, "old"))
            except Exception:
                return True
            return False

        deadline = time.monotonic() + DEADLINE_SECONDS
        while not await refused():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        accepted = await verifier.verify(provider_token("alice", NEW_KEY, "new"))
    finally:
        await jwks.aclose()

    assert accepted.sub == "alice"
