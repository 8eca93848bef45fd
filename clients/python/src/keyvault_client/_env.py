"""A client's settings from the environment, for `KeyVault.from_env` and `get_user_api_key`.

KEYVAULT_URL, and either KEYVAULT_TOKEN or KEYVAULT_CLIENT_ID, KEYVAULT_CLIENT_SECRET and
KEYVAULT_TOKEN_URL (with KEYVAULT_TOKEN_SCOPE and KEYVAULT_TOKEN_AUDIENCE if the identity provider
needs them); KEYVAULT_CACHE_TTL turns the cache on. Errors name the variables, never their values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keyvault_client._credentials import ClientCredentials, check_bearer_token
from keyvault_client._errors import ConfigurationError

_CREDENTIALS = ("KEYVAULT_CLIENT_ID", "KEYVAULT_CLIENT_SECRET", "KEYVAULT_TOKEN_URL")


@dataclass(frozen=True, slots=True)
class EnvSettings:
    base_url: str
    token: str | ClientCredentials = field(repr=False)
    options: dict[str, Any]


def settings_from_env(environ: Mapping[str, str] | None = None) -> EnvSettings:
    env = os.environ if environ is None else environ
    values = {name: value.strip() for name, value in env.items() if name.startswith("KEYVAULT_")}
    base_url = values.get("KEYVAULT_URL")
    if not base_url:
        raise ConfigurationError("KEYVAULT_URL is not set")
    token = values.get("KEYVAULT_TOKEN")
    given = [name for name in _CREDENTIALS if values.get(name)]
    if token and given:
        raise ConfigurationError(
            "set either KEYVAULT_TOKEN or the client credentials (KEYVAULT_CLIENT_ID,"
            " KEYVAULT_CLIENT_SECRET, KEYVAULT_TOKEN_URL), not both"
        )
    source: str | ClientCredentials
    if token:
        try:
            source = check_bearer_token(token)
        except ValueError:
            raise ConfigurationError("KEYVAULT_TOKEN is not a bearer token") from None
    elif len(given) == len(_CREDENTIALS):
        try:
            source = ClientCredentials(
                values["KEYVAULT_TOKEN_URL"],
                values["KEYVAULT_CLIENT_ID"],
                values["KEYVAULT_CLIENT_SECRET"],
                scope=values.get("KEYVAULT_TOKEN_SCOPE") or None,
                audience=values.get("KEYVAULT_TOKEN_AUDIENCE") or None,
            )
        except ValueError as exc:
            raise ConfigurationError(f"KEYVAULT_TOKEN_URL: {exc}") from None
    else:
        missing = ", ".join(name for name in _CREDENTIALS if name not in given)
        raise ConfigurationError(f"KEYVAULT_TOKEN is not set, nor are {missing}")
    options: dict[str, Any] = {}
    ttl = values.get("KEYVAULT_CACHE_TTL")
    if ttl:
        try:
            options["cache_ttl"] = float(ttl)
        except ValueError:
            raise ConfigurationError("KEYVAULT_CACHE_TTL must be a number of seconds") from None
    return EnvSettings(base_url, source, options)
