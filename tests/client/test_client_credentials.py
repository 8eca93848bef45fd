"""ClientCredentials against a real token endpoint over HTTP (tests.identity_provider), whose
tokens the real server verifies with the same provider's JWKS: fetched once and kept, fetched again
shortly before expiry, refreshed once on a 401, and refusals that never show the client secret."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import jwt
import pytest

from keyvault_client import (
    AsyncKeyVault,
    ClientCredentials,
    KeyVault,
    TokenError,
    Unauthorized,
    Unavailable,
)
from keyvault_client._credentials import read_token_response
from tests.client.conftest import SERVICE_ID
from tests.client.support import CANARY_KEY, CANARY_SECRET, assert_no_secret
from tests.identity_provider import IdentityProvider, TokenIssuer
from tests.server import free_port

DEADLINE_SECONDS = 10.0


def credentials(provider: IdentityProvider, **options: Any) -> ClientCredentials:
    return ClientCredentials(provider.token_url, SERVICE_ID, CANARY_SECRET, **options)


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_a_token_is_fetched_once_and_kept(
    server_url: str,
    sub: str,
    identity_provider: IdentityProvider,
    issuer: TokenIssuer,
    auth_method: str,
) -> None:
    with KeyVault(
        server_url, token=credentials(identity_provider, auth_method=auth_method)
    ) as vault:
        vault.put_api_key(sub, CANARY_KEY)
        for _ in range(3):
            assert vault.get_api_key(sub) == CANARY_KEY
        actor = next(iter(vault.access_log(sub))).actor

    assert len(issuer.requests) == 1
    assert issuer.requests[0]["grant_type"] == "client_credentials"
    assert ("client_secret" in issuer.requests[0]) is (auth_method == "client_secret_post")
    assert actor == SERVICE_ID


def test_scope_and_audience_are_asked_for(
    server_url: str, sub: str, identity_provider: IdentityProvider, issuer: TokenIssuer
) -> None:
    asked = credentials(identity_provider, scope="api-key:read users:any", audience="keyvault")
    with KeyVault(server_url, token=asked) as vault:
        vault.status(sub)

    assert issuer.requests[0]["scope"] == "api-key:read users:any"
    assert issuer.requests[0]["audience"] == "keyvault"


def test_a_token_near_its_expiry_is_replaced_before_it_is_refused(
    server_url: str, sub: str, identity_provider: IdentityProvider, issuer: TokenIssuer
) -> None:
    issuer.lifetime = 2  # kept until 0.2 s before it expires
    with KeyVault(server_url, token=credentials(identity_provider)) as vault:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(issuer.requests) < 2:
            assert time.monotonic() < deadline, "the token was never replaced"
            assert vault.status(sub).has_api_key is False
            time.sleep(0.1)  # polling interval while the token ages

    assert len(issuer.issued) == 2


def test_a_token_keyvault_refuses_is_replaced_once_and_the_call_retried(
    server_url: str, sub: str, identity_provider: IdentityProvider, issuer: TokenIssuer
) -> None:
    with KeyVault(server_url, token=credentials(identity_provider)) as vault:
        issuer.audience = "some-other-service"  # keyvault refuses this token (401)
        vault.access_token()
        issuer.audience = "keyvault"

        assert vault.status(sub).has_api_key is False

    assert len(issuer.requests) == 2


def test_a_refused_token_is_refreshed_only_once(
    server_url: str, sub: str, identity_provider: IdentityProvider, issuer: TokenIssuer
) -> None:
    issuer.audience = "some-other-service"
    token = credentials(identity_provider)
    with KeyVault(server_url, token=token) as vault, pytest.raises(Unauthorized) as raised:
        vault.status(sub)

    assert len(issuer.requests) == 2
    assert not isinstance(raised.value, TokenError)


def test_a_wrong_secret_is_a_token_error_that_never_shows_the_secret(
    server_url: str,
    identity_provider: IdentityProvider,
    issuer: TokenIssuer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = ClientCredentials(identity_provider.token_url, SERVICE_ID, "CANARY-wrong-secret-0123")
    with KeyVault(server_url, token=wrong) as vault, pytest.raises(TokenError) as raised:
        vault.get_api_key("anyone")

    assert raised.value.error == "invalid_client"
    assert raised.value.status == 401
    texts = [str(raised.value), repr(raised.value), repr(wrong), repr(vault)]
    texts += [record.getMessage() for record in caplog.records]
    assert_no_secret(texts, "CANARY-wrong-secret-0123", CANARY_SECRET)


def test_an_unreachable_token_endpoint_is_unavailable(server_url: str) -> None:
    nowhere = ClientCredentials(f"http://127.0.0.1:{free_port()}/token", SERVICE_ID, CANARY_SECRET)
    with KeyVault(server_url, token=nowhere) as vault, pytest.raises(Unavailable) as raised:
        vault.get_api_key("anyone")

    assert "token endpoint did not answer" in str(raised.value)


def test_client_credentials_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="token_url"):
        ClientCredentials("ftp://idp/token", SERVICE_ID, CANARY_SECRET)
    with pytest.raises(ValueError, match="must not be empty"):
        ClientCredentials("https://idp/token", SERVICE_ID, "")
    assert CANARY_SECRET not in repr(ClientCredentials("https://idp/token", "id", CANARY_SECRET))


async def test_the_async_client_fetches_keeps_and_refreshes_tokens(
    server_url: str, sub: str, identity_provider: IdentityProvider, issuer: TokenIssuer
) -> None:
    async with AsyncKeyVault(server_url, token=credentials(identity_provider)) as vault:
        issuer.audience = "some-other-service"
        refused = await vault.access_token()
        issuer.audience = "keyvault"

        await vault.put_api_key(sub, CANARY_KEY)
        assert await vault.get_api_key(sub) == CANARY_KEY
        kept = await vault.access_token()

    assert issuer.issued == [refused, kept]


def _answer(body: dict[str, object]) -> httpx.Response:
    return httpx.Response(200, json=body)


def test_without_expires_in_a_jwts_exp_schedules_the_refresh() -> None:
    given = ClientCredentials("https://idp.test/token", SERVICE_ID, CANARY_SECRET)
    token = jwt.encode({"exp": int(time.time()) + 600}, "secret-for-this-test-only-0123456789")

    kept = read_token_response(_answer({"access_token": token}), given, now=100.0)
    opaque = read_token_response(_answer({"access_token": "opaque-token"}), given, now=100.0)

    assert kept.refresh_at is not None
    assert 100 + 600 - 60 - 2 <= kept.refresh_at <= 100 + 600 - 60
    assert opaque.refresh_at is None  # kept until keyvault refuses it


@pytest.mark.parametrize(
    "body",
    [{}, {"access_token": "t", "token_type": "mac"}, {"access_token": "bad token"}],
)
def test_an_unusable_token_answer_is_a_token_error(body: dict[str, object]) -> None:
    given = ClientCredentials("https://idp.test/token", SERVICE_ID, CANARY_SECRET)

    with pytest.raises(TokenError):
        read_token_response(_answer(body), given, now=0.0)
