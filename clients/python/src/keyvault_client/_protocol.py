"""keyvault's HTTP API without the I/O: each operation as a `Call` (method, path, body), its answer
read into a result or a typed error, and the retry rule. KeyVault and AsyncKeyVault send the calls.

A retry is for an idempotent request (GET, PUT, DELETE; RFC 9110 section 9.2.2) that keyvault did
not carry out: the connection was never made, or the answer was 503 or 429. It waits `Retry-After`
when the answer gives one, else an exponential backoff with jitter; a `Retry-After` longer than
`max_wait` is not waited for (the error is raised at once, with its `retry_after`).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import httpx

from keyvault_client._errors import (
    KeyVaultError,
    error_from_response,
    problem_slug,
    retry_after_seconds,
)
from keyvault_client._models import (
    AccessLogEntry,
    KeyStatus,
    UnreadableAnswer,
    access_log_entry,
    key_status,
    optional_time_field,
    required_field,
    text_field,
)

DEFAULT_PROVIDER: Final = "openai"
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRIED_STATUSES: Final = frozenset({429, 503})
RETRIED_ERRORS: Final = (httpx.ConnectError, httpx.ConnectTimeout)
MAX_RETRIES: Final = 10
# The problem types of a 404 that means "no key to hand out", not a missing route or provider.
_NO_KEY: Final = frozenset({"not-found", "key-expired"})

logger = logging.getLogger("keyvault_client")


@dataclass(frozen=True, slots=True)
class Call:
    """One request. `route` is the path's template, the only form that is ever logged (a path
    names the user); `secrets` are what error texts from its answer are scrubbed of."""

    method: str
    path: str
    route: str
    params: dict[str, str] | None = None
    body: dict[str, Any] | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = field(default=(), repr=False)


def _segment(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty str")
    return quote(value, safe="")


def _provider_path(sub: str, provider: str) -> str:
    if isinstance(provider, str) and "/" in provider:
        raise ValueError("provider must be one path segment (no /)")
    return f"/users/{_segment(sub, 'sub')}/api-keys/{_segment(provider, 'provider')}"


_KEY_ROUTE: Final = "/users/{sub}/api-keys/{provider}"


def read_key(sub: str, provider: str) -> Call:
    return Call("GET", _provider_path(sub, provider), _KEY_ROUTE)


def key_status_call(sub: str, provider: str) -> Call:
    return Call("GET", _provider_path(sub, provider) + "/status", _KEY_ROUTE + "/status")


def delete_key(sub: str, provider: str) -> Call:
    return Call("DELETE", _provider_path(sub, provider), _KEY_ROUTE)


def key_list(sub: str) -> Call:
    return Call("GET", f"/users/{_segment(sub, 'sub')}/api-keys", "/users/{sub}/api-keys")


def put_key(
    sub: str,
    provider: str,
    api_key: str,
    *,
    expires_at: datetime | None,
    label: str | None,
    validate: bool,
    if_match: str | None,
) -> Call:
    if not isinstance(api_key, str):
        raise TypeError("api_key must be a str")
    body: dict[str, Any] = {"api_key": api_key}
    if expires_at is not None:
        if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
            raise ValueError("expires_at must be a timezone-aware datetime")
        body["expires_at"] = expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if label is not None:
        body["label"] = label
    headers = {"If-Match": if_match} if if_match is not None else {}
    params = {"validate": "true"} if validate else None
    path = _provider_path(sub, provider)
    return Call("PUT", path, _KEY_ROUTE, params, body, headers, (api_key, api_key.strip()))


def access_log_page(sub: str, cursor: str | None, limit: int) -> Call:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
        raise ValueError("page_size must be an int from 1 to 500")
    params = {"limit": str(limit)}
    if cursor is not None:
        params["cursor"] = cursor
    path = f"/users/{_segment(sub, 'sub')}/api-key/access-log"
    return Call("GET", path, "/users/{sub}/api-key/access-log", params)


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        raise UnreadableAnswer(
            f"keyvault answered {response.status_code} with a body that is not JSON",
            status=response.status_code,
        ) from None


def refused(response: httpx.Response, call: Call, token: str) -> KeyVaultError:
    return error_from_response(response, (*call.secrets, token))


def api_key_result(
    response: httpx.Response, call: Call, token: str
) -> tuple[str, datetime | None] | None:
    """(key, its expires_at) from a read; None when the user has no key there or it expired."""
    if response.status_code == 200:
        body = _json(response)
        return text_field(body, "api_key"), optional_time_field(body, "expires_at")
    if response.status_code == 404 and problem_slug(response) in _NO_KEY:
        return None
    raise refused(response, call, token)


def status_result(response: httpx.Response, call: Call, token: str, provider: str) -> KeyStatus:
    if response.status_code in (200, 201):
        return key_status(_json(response), provider, response.headers.get("ETag"))
    raise refused(response, call, token)


def delete_result(response: httpx.Response, call: Call, token: str) -> bool:
    if response.status_code in (200, 204):
        return True
    if response.status_code == 404 and problem_slug(response) == "not-found":
        return False
    raise refused(response, call, token)


def list_result(response: httpx.Response, call: Call, token: str) -> list[KeyStatus]:
    if response.status_code != 200:
        raise refused(response, call, token)
    keys = required_field(_json(response), "keys")
    if not isinstance(keys, list):
        raise UnreadableAnswer("keyvault's answer has no readable `keys`")
    return [key_status(item, text_field(item, "provider")) for item in keys]


def access_log_result(
    response: httpx.Response, call: Call, token: str
) -> tuple[list[AccessLogEntry], str | None]:
    if response.status_code != 200:
        raise refused(response, call, token)
    body = _json(response)
    events = required_field(body, "events")
    cursor = required_field(body, "next_cursor")
    if not isinstance(events, list) or not (cursor is None or isinstance(cursor, str)):
        raise UnreadableAnswer("keyvault's access log page is not readable")
    return [access_log_entry(item) for item in events], cursor


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`retries` more attempts at most; `backoff` seconds before the first (doubling, with
    jitter); never a wait longer than `max_wait` seconds."""

    retries: int = 3
    backoff: float = 0.2
    max_wait: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not 0 <= self.retries <= MAX_RETRIES:
            raise ValueError(f"retries must be from 0 to {MAX_RETRIES}")
        if not 0 <= self.backoff <= self.max_wait:
            raise ValueError("backoff must be from 0 to max_retry_wait seconds")


class Attempts:
    """The retry budget of one call: each `after_*` says how long to wait before retrying, or None."""

    def __init__(self, policy: RetryPolicy, call: Call) -> None:
        self._policy = policy
        self._call = call
        self._retried = 0

    def after_response(self, response: httpx.Response) -> float | None:
        if response.status_code not in RETRIED_STATUSES or not self._may_retry():
            return None
        asked = retry_after_seconds(response)
        if asked is not None and asked > self._policy.max_wait:
            return None
        delay = asked if asked is not None else self._backoff()
        return self._retrying(str(response.status_code), delay)

    def after_error(self, exc: httpx.TransportError) -> float | None:
        if not isinstance(exc, RETRIED_ERRORS) or not self._may_retry():
            return None
        return self._retrying(type(exc).__name__, self._backoff())

    def _may_retry(self) -> bool:
        return self._call.method in IDEMPOTENT_METHODS and self._retried < self._policy.retries

    def _backoff(self) -> float:
        ceiling = min(self._policy.max_wait, self._policy.backoff * float(2**self._retried))
        return ceiling * random.uniform(0.5, 1.0)

    def _retrying(self, reason: str, delay: float) -> float:
        self._retried += 1
        logger.info(
            "keyvault %s %s: %s; retry %d of %d in %.2f s",
            self._call.method,
            self._call.route,
            reason,
            self._retried,
            self._policy.retries,
            delay,
        )
        return delay
