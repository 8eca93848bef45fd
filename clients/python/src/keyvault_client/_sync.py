"""`KeyVault`: the blocking client. One connection pool per client, safe to share between threads."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import httpx

from keyvault_client import _protocol as protocol
from keyvault_client._auth import SyncAuth, TokenSource, check_token_source
from keyvault_client._cache import DEFAULT_MAX_ENTRIES
from keyvault_client._config import DEFAULT_TIMEOUT, client_options
from keyvault_client._env import settings_from_env
from keyvault_client._errors import unreachable
from keyvault_client._models import AccessLogEntry, KeyStatus
from keyvault_client._protocol import DEFAULT_PROVIDER, Attempts, Call


class KeyVault:
    """A client of one keyvault server.

    `token` is a bearer token, a callable returning one (called for every request), or
    `ClientCredentials`. Connect errors, 503 and 429 are retried up to `retries` times, waiting
    `Retry-After` (at most `max_retry_wait` seconds) or a backoff starting at `backoff` seconds.
    `cache_ttl` (seconds, at most 300) turns on a cache of `get_api_key` for up to `cache_size`
    keys. Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: TokenSource,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.2,
        max_retry_wait: float = 10.0,
        cache_ttl: float | None = None,
        cache_size: int = DEFAULT_MAX_ENTRIES,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        options = client_options(
            base_url,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_retry_wait=max_retry_wait,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
            verify=verify,
        )
        self.base_url = options.base_url
        self._retry = options.retry
        self._cache = options.cache
        check_token_source(token)
        self._http = httpx.Client(**options.http)
        self._auth = SyncAuth(token, self._http)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Self:
        """A client configured by KEYVAULT_URL and KEYVAULT_TOKEN, or KEYVAULT_CLIENT_ID,
        KEYVAULT_CLIENT_SECRET and KEYVAULT_TOKEN_URL (see docs/client.md)."""
        settings = settings_from_env(environ)
        return cls(settings.base_url, token=settings.token, **(settings.options | options))

    def __repr__(self) -> str:
        return f"KeyVault({self.base_url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def access_token(self) -> str:
        """The bearer token the next request would carry (client credentials fetched if needed)."""
        return self._auth.token()

    def get_api_key(self, sub: str, provider: str = DEFAULT_PROVIDER) -> str | None:
        """The user's key for `provider`; None when there is none or it has expired."""
        call = protocol.read_key(sub, provider)
        ticket = 0
        if self._cache is not None:
            cached = self._cache.get(sub, provider)
            if cached is not None:
                return cached
            ticket = self._cache.ticket()
        response, token = self._send(call)
        found = protocol.api_key_result(response, call, token)
        if found is None:
            return None
        key, expires_at = found
        if self._cache is not None:
            self._cache.store(sub, provider, key, expires_at, ticket)
        return key

    def put_api_key(
        self,
        sub: str,
        api_key: str,
        provider: str = DEFAULT_PROVIDER,
        *,
        expires_at: datetime | None = None,
        label: str | None = None,
        validate: bool = False,
        if_match: str | None = None,
    ) -> KeyStatus:
        """Store or replace the user's key; `validate` asks the provider first, `if_match` (an
        ETag from a status) writes only if the key is unchanged since."""
        call = protocol.put_key(
            sub,
            provider,
            api_key,
            expires_at=expires_at,
            label=label,
            validate=validate,
            if_match=if_match,
        )
        response, token = self._write(sub, call)
        return protocol.status_result(response, call, token, provider)

    def delete_api_key(self, sub: str, provider: str = DEFAULT_PROVIDER) -> bool:
        """Delete the user's key; False when there was none."""
        call = protocol.delete_key(sub, provider)
        response, token = self._write(sub, call)
        return protocol.delete_result(response, call, token)

    def status(self, sub: str, provider: str = DEFAULT_PROVIDER) -> KeyStatus:
        """Whether the user has a key for `provider`, and its details (never the key)."""
        call = protocol.key_status_call(sub, provider)
        response, token = self._send(call)
        return protocol.status_result(response, call, token, provider)

    def list_keys(self, sub: str) -> list[KeyStatus]:
        """The status of each of the user's keys, one per provider."""
        call = protocol.key_list(sub)
        response, token = self._send(call)
        return protocol.list_result(response, call, token)

    def access_log(self, sub: str, *, page_size: int = 100) -> Iterator[AccessLogEntry]:
        """Every use of the user's keys, newest first, fetching one page at a time as it goes."""
        first = protocol.access_log_page(sub, None, page_size)
        return self._access_log(sub, first, page_size)

    def _access_log(self, sub: str, call: Call, page_size: int) -> Iterator[AccessLogEntry]:
        while True:
            response, token = self._send(call)
            entries, cursor = protocol.access_log_result(response, call, token)
            yield from entries
            if cursor is None:
                return
            call = protocol.access_log_page(sub, cursor, page_size)

    def _write(self, sub: str, call: Call) -> tuple[httpx.Response, str]:
        # Dropped before (no read from the cache while the write is under way) and after (no read
        # that raced the write keeps the old key).
        if self._cache is not None:
            self._cache.drop(sub)
        try:
            return self._send(call)
        finally:
            if self._cache is not None:
                self._cache.drop(sub)

    def _send(self, call: Call) -> tuple[httpx.Response, str]:
        """The answer to `call` after retries and at most one token refresh, and the token sent."""
        attempts = Attempts(self._retry, call)
        token = self._auth.token()
        refreshed = False
        while True:
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.body,
                    headers={**call.headers, "Authorization": f"Bearer {token}"},
                )
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
                if delay is None:
                    raise unreachable(exc) from exc
            else:
                if response.status_code == 401 and not refreshed:
                    refreshed = True
                    fresh = self._auth.refresh(token)
                    if fresh is not None:
                        token = fresh
                        continue
                delay = attempts.after_response(response)
                if delay is None:
                    return response, token
            time.sleep(delay)
            token = self._auth.token()
