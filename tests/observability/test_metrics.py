from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from keyvault.config import Settings
from keyvault.crypto.records import Keyring
from keyvault.db.engine import create_engine, create_sessionmaker, session_scope
from keyvault.db.models import ApiKeyRecord
from keyvault.web.app import create_app
from tests.conftest import AUDIENCE, ISSUER, bearer, key_path, make_settings, mint
from tests.prometheus import label_values, sample

ALL = "api-key:read api-key:write api-key:delete"
CANARY_SUB = "google-oauth2|metrics-canary-7f3a"
CANARY_KEY = "sk-metrics-canary-0123456789abcdef"
KEY_ROUTE = "/users/{sub}/api-key"


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def set_column(database_url: str, sub: str, **values: object) -> None:
    engine = create_engine(database_url)
    try:
        async with session_scope(create_sessionmaker(engine)) as session:
            await session.execute(
                update(ApiKeyRecord).where(ApiKeyRecord.sub == sub).values(**values)
            )
    finally:
        await engine.dispose()


async def test_requests_are_counted_by_route_template_method_and_status(
    client: httpx.AsyncClient,
) -> None:
    labels = {"route": KEY_ROUTE, "method": "PUT", "status": "201"}
    before = sample(await scrape(client), "keyvault_http_requests_total", **labels)

    created = await client.put(
        key_path(CANARY_SUB), json={"api_key": CANARY_KEY}, headers=bearer(mint(CANARY_SUB, ALL))
    )

    assert created.status_code == 201
    after = sample(await scrape(client), "keyvault_http_requests_total", **labels)
    assert after == before + 1


async def test_latency_is_observed_per_route_template_and_method(
    client: httpx.AsyncClient,
) -> None:
    labels = {"route": "/users/{sub}/api-key/status", "method": "GET"}
    name = "keyvault_http_request_duration_seconds_count"
    before = sample(await scrape(client), name, **labels)

    for sub in ("alice", "bob"):
        await client.get(key_path(sub, "/status"), headers=bearer(mint(sub, ALL)))

    text = await scrape(client)
    assert sample(text, name, **labels) == before + 2
    assert sample(text, "keyvault_http_request_duration_seconds_bucket", le="+Inf", **labels) >= 2


async def test_no_label_holds_a_sub_a_key_or_a_token(client: httpx.AsyncClient) -> None:
    token_value = mint(CANARY_SUB, ALL)
    await client.put(
        key_path(CANARY_SUB), json={"api_key": CANARY_KEY}, headers=bearer(token_value)
    )
    await client.get(key_path(CANARY_SUB), headers=bearer(token_value))
    await client.get(key_path(CANARY_SUB), headers=bearer(token_value + "x"))

    text = await scrape(client)

    assert KEY_ROUTE in label_values(text)
    for secret in (CANARY_SUB, "metrics-canary", CANARY_KEY, token_value):
        assert secret not in text


async def test_unknown_paths_share_one_label(client: httpx.AsyncClient) -> None:
    labels = {"route": "<unmatched>", "method": "GET", "status": "404"}
    before = sample(await scrape(client), "keyvault_http_requests_total", **labels)

    for n in range(3):
        await client.get(f"/no-such-page-{n}")

    text = await scrape(client)
    assert sample(text, "keyvault_http_requests_total", **labels) == before + 3
    assert "/no-such-page-0" not in text


def _unsigned() -> str:
    claims = {"sub": "alice", "scope": ALL, "iss": ISSUER, "aud": AUDIENCE}
    return jwt.encode(claims | {"exp": int(time.time()) + 300}, "", algorithm="none")


def _expired() -> str:
    return mint("alice", ALL, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)


AUTH_FAILURES = {
    "missing": (None, "alice"),
    "malformed": ("not-a-jwt", "alice"),
    "expired": (_expired, "alice"),
    "bad_signature": (lambda: mint("alice", ALL, secret="another-secret-" + "0" * 32), "alice"),
    "wrong_algorithm": (_unsigned, "alice"),
    "wrong_audience": (lambda: mint("alice", ALL, aud="someone-else"), "alice"),
    "wrong_issuer": (lambda: mint("alice", ALL, iss="someone-else"), "alice"),
    "missing_claim": (lambda: mint("alice", ALL, exp=None), "alice"),
    "forbidden_scope": (lambda: mint("alice", "api-key:write"), "alice"),
    "forbidden_user": (lambda: mint("alice", "api-key:read"), "bob"),
}


@pytest.mark.parametrize("reason", sorted(AUTH_FAILURES))
async def test_auth_failures_are_counted_by_reason(client: httpx.AsyncClient, reason: str) -> None:
    make_token, target = AUTH_FAILURES[reason]
    token_value = make_token() if callable(make_token) else make_token
    headers = bearer(token_value) if token_value is not None else {}
    before = await scrape(client)

    response = await client.get(key_path(target), headers=headers)

    assert response.status_code == (403 if reason.startswith("forbidden") else 401)
    after = await scrape(client)
    assert sample(after, "keyvault_auth_failures_total", reason=reason) == (
        sample(before, "keyvault_auth_failures_total", reason=reason) + 1
    )


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [("ciphertext", b"\x00" * 40, "integrity"), ("key_id", "00000000deadbeef", "unknown_key_id")],
)
async def test_records_that_cannot_be_opened_are_counted_by_reason(
    client: httpx.AsyncClient, settings: Settings, column: str, value: object, reason: str
) -> None:
    headers = bearer(mint("alice", ALL))
    await client.put(key_path("alice"), json={"api_key": CANARY_KEY}, headers=headers)
    await set_column(settings.database_url.get_secret_value(), "alice", **{column: value})
    before = sample(await scrape(client), "keyvault_decrypt_failures_total", reason=reason)

    read = await client.get(key_path("alice"), headers=headers)

    assert read.status_code == 500
    after = sample(await scrape(client), "keyvault_decrypt_failures_total", reason=reason)
    assert after == before + 1


async def test_records_are_counted_by_the_key_id_that_sealed_them(
    client: httpx.AsyncClient, keyring: Keyring
) -> None:
    for sub in ("alice", "bob", "carol"):
        await client.put(
            key_path(sub), json={"api_key": CANARY_KEY}, headers=bearer(mint(sub, ALL))
        )

    text = await scrape(client)

    assert sample(text, "keyvault_records", key_id=keyring.current.key_id) == 3


@pytest.fixture
async def guarded_app(settings: Settings, keyring: Keyring) -> AsyncIterator[FastAPI]:
    guarded = make_settings(
        settings.database_url.get_secret_value(), metrics_token="metrics-token-0123456789"
    )
    application = create_app(guarded, keyring=keyring)
    async with application.router.lifespan_context(application):
        yield application


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic bWV0cmljcw=="])
async def test_metrics_token_when_configured_is_required(
    guarded_app: FastAPI, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    transport = httpx.ASGITransport(app=guarded_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyvault.test") as http:
        response = await http.get("/metrics", headers=headers)

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert "keyvault_" not in response.text


async def test_metrics_token_when_configured_opens_the_metrics(guarded_app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=guarded_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyvault.test") as http:
        response = await http.get("/metrics", headers=bearer("metrics-token-0123456789"))

    assert response.status_code == 200
    assert "keyvault_http_requests_total" in response.text


def test_an_empty_metrics_token_leaves_the_metrics_open(settings: Settings) -> None:
    assert (
        make_settings(settings.database_url.get_secret_value(), metrics_token="").metrics_token
        is None
    )
