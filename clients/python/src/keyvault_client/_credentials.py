"""OAuth 2 client credentials (RFC 6749 section 4.4): the settings, the token request, and reading
the token endpoint's answer. The HTTP exchange itself is the clients' (keyvault_client._auth).

A token is kept until shortly before it expires: `expires_in` from the answer, else the `exp` of a
JWT access token, else until keyvault refuses it (a 401 fetches a new one and retries once).
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import quote

import httpx

from keyvault_client._errors import TokenError, Unavailable, retry_after_seconds, scrub

# RFC 6750 section 2.1: what an `Authorization: Bearer` value may hold. A token outside it is
# refused before it reaches an HTTP library whose own error would quote the header.
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Refresh this long before expiry: a tenth of the token's life, at most a minute.
_REFRESH_SHARE: Final = 0.1
_MAX_REFRESH_MARGIN: Final = 60.0

AuthMethod = Literal["client_secret_basic", "client_secret_post"]


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """Where and how to fetch keyvault tokens for a service: the identity provider's token endpoint,
    the service's client id and secret, and optionally the scope and audience to ask for.

    `auth_method` is how the secret is sent: HTTP Basic (RFC 6749's recommendation) or in the form.
    """

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    audience: str | None = None
    auth_method: AuthMethod = "client_secret_basic"

    def __post_init__(self) -> None:
        if not self.token_url.startswith(("https://", "http://")):
            raise ValueError("token_url must be an http:// or https:// URL")
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret must not be empty")
        if self.auth_method not in ("client_secret_basic", "client_secret_post"):
            raise ValueError("auth_method must be client_secret_basic or client_secret_post")


@dataclass(frozen=True, slots=True)
class FetchedToken:
    value: str = field(repr=False)
    refresh_at: float | None  # on the clock the client passed in; None: until refused

    def fresh(self, now: float) -> bool:
        return self.refresh_at is None or now < self.refresh_at


def check_bearer_token(token: object) -> str:
    """The token, if it can be sent as a bearer token; an error that never quotes it otherwise."""
    if not isinstance(token, str):
        raise TypeError("a keyvault token must be a str")
    if _B64TOKEN.fullmatch(token) is None:
        raise ValueError(
            "a keyvault token must be a non-empty bearer token (letters, digits and -._~+/ only)"
        )
    return token


def token_request(credentials: ClientCredentials) -> tuple[dict[str, str], dict[str, str]]:
    """The headers and form of the token request."""
    form = {"grant_type": "client_credentials"}
    if credentials.scope:
        form["scope"] = credentials.scope
    if credentials.audience:
        form["audience"] = credentials.audience
    headers = {"Accept": "application/json"}
    if credentials.auth_method == "client_secret_basic":
        # RFC 6749 section 2.3.1: each part form-encoded before joining.
        user = (
            quote(credentials.client_id, safe="") + ":" + quote(credentials.client_secret, safe="")
        )
        headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode("ascii")
    else:
        form |= {"client_id": credentials.client_id, "client_secret": credentials.client_secret}
    return headers, form


def read_token_response(
    response: httpx.Response, credentials: ClientCredentials, now: float
) -> FetchedToken:
    """The access token from the endpoint's answer, kept until shortly before it expires.

    A refusal (4xx) is a TokenError; 429 and 5xx are Unavailable. The token request is a POST, so
    it is not retried: the keyvault call that needed the token fails."""
    secrets = (credentials.client_secret,)
    if response.status_code == 429 or response.status_code >= 500:
        raise Unavailable(
            f"the token endpoint answered {response.status_code}",
            status=response.status_code,
            retry_after=retry_after_seconds(response),
        )
    body = _json_object(response)
    if response.status_code != 200:
        error = body.get("error")
        description = body.get("error_description")
        message = f"the token endpoint answered {response.status_code}"
        if isinstance(error, str):
            message += f" {scrub(error, secrets)}"
        if isinstance(description, str):
            message += f": {scrub(description, secrets)}"
        raise TokenError(
            message,
            status=response.status_code,
            error=scrub(error, secrets) if isinstance(error, str) else None,
        )
    token = body.get("access_token")
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token, str) or not isinstance(token_type, str):
        raise TokenError("the token endpoint's answer has no access_token", status=200)
    if token_type.lower() != "bearer":
        raise TokenError("the token endpoint issued a token that is not a bearer token", status=200)
    try:
        check_bearer_token(token)
    except ValueError:
        raise TokenError("the token endpoint issued a malformed token", status=200) from None
    lifetime = _lifetime(body.get("expires_in"), token)
    if lifetime is None:
        return FetchedToken(token, None)
    margin = min(_MAX_REFRESH_MARGIN, lifetime * _REFRESH_SHARE)
    return FetchedToken(token, now + lifetime - margin)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _lifetime(expires_in: object, token: str) -> float | None:
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        return float(expires_in)
    if isinstance(expires_in, str) and expires_in.isdigit():
        return float(expires_in)
    return _jwt_lifetime(token)


def _jwt_lifetime(token: str) -> float | None:
    """Seconds until a JWT's `exp`, read without verifying (keyvault verifies; this only schedules
    the refresh). None for a token that is not a JWT or has no `exp`."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    return max(0.0, exp - time.time())
