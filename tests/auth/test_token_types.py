"""Only access tokens get in (RFC 9068 `typ: at+jwt`): not the provider's ID tokens, nor its
generic JWTs unless configured; and a refusal's reason word reaches the request's log line."""

from __future__ import annotations

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

from keyvault.auth.tokens import mint_token
from keyvault.crypto.records import Keyring
from keyvault.web.app import create_app
from tests.audit_support import new_sub, stored_events
from tests.conftest import AUDIENCE, ISSUER, JWT_SECRET, bearer, key_path, make_settings, mint
from tests.identity_provider import jwks_of, running_provider

PROVIDER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ALL = "api-key:read api-key:write"


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    with running_provider(jwks_of({"rsa-1": PROVIDER_KEY})) as provider:
        yield provider.url


@pytest.fixture
def start_app(database_url: str, keyring: Keyring, jwks_url: str) -> Any:
    @asynccontextmanager
    async def running(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = make_settings(database_url, jwks_url=jwks_url, **overrides)
        app = create_app(settings, keyring=keyring)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as client:
                yield client

    return running


def provider_token(sub: str, typ: str | None, **extra: Any) -> str:
    now = int(time.time())
    claims = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300} | extra
    headers: dict[str, Any] = {"kid": "rsa-1", "typ": typ}
    token = jwt.encode(claims, PROVIDER_KEY, algorithm="RS256", headers=headers)
    if typ is None:  # PyJWT writes `typ: JWT` unless told otherwise, and drops a None one
        assert "typ" not in jwt.get_unverified_header(token)
    return token


def id_token(sub: str) -> str:
    """What an OpenID provider issues to keyvault's client at sign-in: no scope, a nonce."""
    return provider_token(
        sub, "JWT", nonce=uuid.uuid4().hex, auth_time=int(time.time()), azp="keyvault"
    )


async def test_an_id_token_for_keyvaults_audience_is_not_authenticated(
    start_app: Any, database_url: str
) -> None:
    sub = new_sub()
    async with start_app() as client:
        read = await client.get(key_path(sub), headers=bearer(id_token(sub)))
        put = await client.put(
            key_path(sub), json={"api_key": "sk-id-token-0123456789"}, headers=bearer(id_token(sub))
        )

    for response in (read, put):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    events = await stored_events(database_url, sub)
    assert [(e.event.outcome, e.event.actor) for e in events] == [("denied_401", None)] * 2


@pytest.mark.parametrize("typ", ["JWT", None, "id_token+jwt", "application/jwt"])
async def test_a_provider_token_that_is_not_typed_as_an_access_token_is_refused(
    start_app: Any, typ: str | None
) -> None:
    sub = new_sub()
    async with start_app() as client:
        response = await client.get(
            key_path(sub, "/status"), headers=bearer(provider_token(sub, typ, scope=ALL))
        )
    assert response.status_code == 401


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"])
async def test_an_access_token_type_is_accepted_in_any_case_with_or_without_application(
    start_app: Any, typ: str
) -> None:
    sub = new_sub()
    async with start_app() as client:
        response = await client.get(
            key_path(sub, "/status"), headers=bearer(provider_token(sub, typ, scope=ALL))
        )
    assert response.status_code == 200


async def test_a_provider_that_types_access_tokens_jwt_can_be_allowed_by_setting(
    start_app: Any,
) -> None:
    sub = new_sub()
    async with start_app(jwks_token_types="at+jwt, JWT") as client:
        generic = await client.get(
            key_path(sub, "/status"), headers=bearer(provider_token(sub, "JWT", scope=ALL))
        )
        untyped = await client.get(
            key_path(sub, "/status"), headers=bearer(provider_token(sub, None, scope=ALL))
        )
    assert (generic.status_code, untyped.status_code) == (200, 401)


def test_keyvault_token_mints_access_tokens() -> None:
    token = mint_token(make_settings("sqlite+aiosqlite:///unused.db"), "alice", ALL, 60)
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"


@pytest.mark.parametrize(("typ", "status"), [("at+jwt", 200), ("JWT", 200), (None, 200)])
async def test_hs256_tokens_typed_as_before_or_as_access_tokens_are_accepted(
    start_app: Any, typ: str | None, status: int
) -> None:
    sub = new_sub()
    now = int(time.time())
    claims = {"sub": sub, "scope": ALL, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers={"typ": typ})
    async with start_app() as client:
        response = await client.get(key_path(sub, "/status"), headers=bearer(token))
    assert response.status_code == status


async def test_an_hs256_token_typed_as_something_else_is_refused(start_app: Any) -> None:
    sub = new_sub()
    now = int(time.time())
    claims = {"sub": sub, "scope": ALL, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers={"typ": "logout+jwt"})
    async with start_app() as client:
        response = await client.get(key_path(sub, "/status"), headers=bearer(token))
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("token_of", "reason"),
    [
        (id_token, "wrong_type"),
        (lambda sub: mint(sub, ALL, exp=int(time.time()) - 600), "expired"),
        (lambda sub: mint(sub, ALL, aud="someone-else"), "wrong_audience"),
        (lambda sub: mint(sub, ALL, secret="x" * 40), "bad_signature"),
        (lambda sub: mint(sub, "audit:read"), "forbidden_scope"),
    ],
)
async def test_the_refusal_reason_is_in_the_access_log_line_and_the_token_is_not(
    start_app: Any, caplog: pytest.LogCaptureFixture, token_of: Any, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="keyvault.access")
    sub = new_sub()
    token = token_of(sub)
    async with start_app() as client:
        await client.get(key_path(sub), headers=bearer(token))

    [line] = [r for r in caplog.records if r.name == "keyvault.access"]
    assert line.__dict__["reason"] == reason
    assert token not in str(line.__dict__)
