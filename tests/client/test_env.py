"""`keyvault_client.get_user_api_key(sub)`, configured from the environment alone: with a token,
with client credentials, and the configuration errors (which name variables, never values)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import keyvault_client
from keyvault_client import ConfigurationError, KeyVault
from tests.client.conftest import SERVICE_ID, service_token
from tests.client.support import CANARY_KEY, CANARY_SECRET, assert_no_secret
from tests.identity_provider import IdentityProvider, TokenIssuer

VARIABLES = (
    "KEYVAULT_URL",
    "KEYVAULT_TOKEN",
    "KEYVAULT_CLIENT_ID",
    "KEYVAULT_CLIENT_SECRET",
    "KEYVAULT_TOKEN_URL",
    "KEYVAULT_TOKEN_SCOPE",
    "KEYVAULT_TOKEN_AUDIENCE",
    "KEYVAULT_CACHE_TTL",
)


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    keyvault_client.close_default_vault()
    yield monkeypatch
    keyvault_client.close_default_vault()


def test_one_line_reads_a_users_key_with_a_token(
    server_url: str, sub: str, environment: pytest.MonkeyPatch
) -> None:
    with KeyVault(server_url, token=service_token()) as vault:
        vault.put_api_key(sub, CANARY_KEY)
    environment.setenv("KEYVAULT_URL", server_url + "/")
    environment.setenv("KEYVAULT_TOKEN", service_token())

    assert keyvault_client.get_user_api_key(sub) == CANARY_KEY
    assert keyvault_client.get_user_api_key(sub, "anthropic") is None
    assert keyvault_client.default_vault() is keyvault_client.default_vault()


def test_one_line_reads_a_users_key_with_client_credentials(
    server_url: str,
    sub: str,
    identity_provider: IdentityProvider,
    issuer: TokenIssuer,
    environment: pytest.MonkeyPatch,
) -> None:
    with KeyVault(server_url, token=service_token()) as vault:
        vault.put_api_key(sub, CANARY_KEY)
    environment.setenv("KEYVAULT_URL", server_url)
    environment.setenv("KEYVAULT_CLIENT_ID", SERVICE_ID)
    environment.setenv("KEYVAULT_CLIENT_SECRET", CANARY_SECRET)
    environment.setenv("KEYVAULT_TOKEN_URL", identity_provider.token_url)
    environment.setenv("KEYVAULT_TOKEN_SCOPE", "api-key:read users:any")
    environment.setenv("KEYVAULT_CACHE_TTL", "30")

    assert keyvault_client.get_user_api_key(sub) == CANARY_KEY
    assert keyvault_client.get_user_api_key(sub) == CANARY_KEY

    assert len(issuer.requests) == 1
    assert issuer.requests[0]["scope"] == "api-key:read users:any"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "KEYVAULT_URL is not set"),
        ({"KEYVAULT_URL": "http://kv"}, "KEYVAULT_TOKEN is not set, nor are KEYVAULT_CLIENT_ID"),
        (
            {
                "KEYVAULT_URL": "http://kv",
                "KEYVAULT_CLIENT_ID": "svc",
                "KEYVAULT_CLIENT_SECRET": CANARY_SECRET,
            },
            "nor are KEYVAULT_TOKEN_URL$",
        ),
        (
            {"KEYVAULT_URL": "http://kv", "KEYVAULT_TOKEN": "t", "KEYVAULT_CLIENT_ID": "svc"},
            "not both",
        ),
        (
            {"KEYVAULT_URL": "http://kv", "KEYVAULT_TOKEN": f"{CANARY_SECRET} x"},
            "not a bearer token",
        ),
        (
            {"KEYVAULT_URL": "http://kv", "KEYVAULT_TOKEN": "t", "KEYVAULT_CACHE_TTL": "soon"},
            "KEYVAULT_CACHE_TTL must be a number",
        ),
    ],
)
def test_a_missing_or_broken_setting_is_named_without_its_value(
    environment: pytest.MonkeyPatch, settings: dict[str, str], message: str
) -> None:
    for name, value in settings.items():
        environment.setenv(name, value)

    with pytest.raises(ConfigurationError, match=message) as raised:
        keyvault_client.get_user_api_key("alice")

    assert_no_secret([str(raised.value), repr(raised.value)], CANARY_SECRET)


def test_from_env_takes_a_mapping_and_options() -> None:
    environ = {"KEYVAULT_URL": "http://kv.test", "KEYVAULT_TOKEN": "t0k3n"}
    with KeyVault.from_env(environ, retries=0) as vault:
        assert vault.base_url == "http://kv.test"
        assert vault.access_token() == "t0k3n"
