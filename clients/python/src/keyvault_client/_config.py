"""What KeyVault and AsyncKeyVault share: the checked base URL, timeouts, connection pool and
User-Agent, and the options checked before any connection pool is opened."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Final

import httpx

from keyvault_client._cache import KeyCache
from keyvault_client._protocol import RetryPolicy
from keyvault_client._version import __version__

# Connect fast or fail over; a read waits out validation with the provider (5 s on the server).
DEFAULT_TIMEOUT: Final = httpx.Timeout(10.0, connect=3.0)
# Idle connections are closed before the server's keep-alive (uvicorn's 5 s) can close them.
LIMITS: Final = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=4.0
)
USER_AGENT: Final = f"keyvault-client/{__version__} httpx/{httpx.__version__}"


@dataclass(frozen=True, slots=True)
class Options:
    base_url: str
    retry: RetryPolicy
    cache: KeyCache | None
    http: dict[str, Any]


def client_options(
    base_url: str,
    *,
    timeout: float | httpx.Timeout,
    retries: int,
    backoff: float,
    max_retry_wait: float,
    cache_ttl: float | None,
    cache_size: int,
    verify: ssl.SSLContext | bool,
) -> Options:
    if not isinstance(base_url, str) or not base_url.startswith(("https://", "http://")):
        raise ValueError("base_url must be an http:// or https:// URL")
    base_url = base_url.rstrip("/")
    cache = KeyCache(cache_ttl, cache_size) if cache_ttl is not None else None
    http = {
        "base_url": base_url,
        "timeout": timeout,
        "limits": LIMITS,
        "verify": verify,
        "headers": {"User-Agent": USER_AGENT},
        # A redirect would carry the bearer token to wherever it points.
        "follow_redirects": False,
    }
    return Options(base_url, RetryPolicy(retries, backoff, max_retry_wait), cache, http)
