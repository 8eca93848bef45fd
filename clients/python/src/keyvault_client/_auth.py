"""Where a client's bearer token comes from: a string, a callable, or client credentials.

`token()` gives the token for the next request; `refresh(rejected)` is asked once when keyvault
answers 401 and gives a different token to retry with, or None when there is none to try (a fixed
string, or a callable that returns the same token again). Client credentials are fetched over the
client's own connection pool, one fetch at a time, and kept until shortly before they expire.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable

import httpx

from keyvault_client._credentials import (
    ClientCredentials,
    FetchedToken,
    check_bearer_token,
    read_token_response,
    token_request,
)
from keyvault_client._errors import unreachable

TokenSource = str | Callable[[], str] | ClientCredentials
AsyncTokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]] | ClientCredentials
Clock = Callable[[], float]

_TOKEN_ENDPOINT = "the token endpoint"


def check_token_source(source: object) -> None:
    """Refuses a token source of the wrong kind, or a string that is no bearer token."""
    if isinstance(source, str):
        check_bearer_token(source)
    elif not isinstance(source, ClientCredentials) and not callable(source):
        raise TypeError("token must be a str, a callable returning one, or ClientCredentials")


class SyncAuth:
    def __init__(self, source: TokenSource, http: httpx.Client, clock: Clock = time.monotonic):
        self._source = source
        self._http = http
        self._clock = clock
        self._lock = threading.Lock()
        self._fetched: FetchedToken | None = None

    @property
    def client_secret(self) -> str | None:
        return self._source.client_secret if isinstance(self._source, ClientCredentials) else None

    def token(self) -> str:
        source = self._source
        if isinstance(source, str):
            return source
        if isinstance(source, ClientCredentials):
            with self._lock:
                fetched = self._fetched
                if fetched is None or not fetched.fresh(self._clock()):
                    fetched = self._fetched = self._fetch(source)
                return fetched.value
        return check_bearer_token(source())

    def refresh(self, rejected: str) -> str | None:
        source = self._source
        if isinstance(source, str):
            return None
        if isinstance(source, ClientCredentials):
            with self._lock:
                fetched = self._fetched
                # Another thread may have replaced the rejected token already.
                if fetched is None or fetched.value == rejected or not fetched.fresh(self._clock()):
                    fetched = self._fetched = self._fetch(source)
                return fetched.value if fetched.value != rejected else None
        fresh = check_bearer_token(source())
        return fresh if fresh != rejected else None

    def _fetch(self, credentials: ClientCredentials) -> FetchedToken:
        headers, form = token_request(credentials)
        asked_at = self._clock()
        try:
            response = self._http.post(credentials.token_url, headers=headers, data=form)
        except httpx.TransportError as exc:
            raise unreachable(exc, _TOKEN_ENDPOINT) from exc
        return read_token_response(response, credentials, asked_at)


class AsyncAuth:
    def __init__(
        self, source: AsyncTokenSource, http: httpx.AsyncClient, clock: Clock = time.monotonic
    ):
        self._source = source
        self._http = http
        self._clock = clock
        self._lock = asyncio.Lock()
        self._fetched: FetchedToken | None = None

    @property
    def client_secret(self) -> str | None:
        return self._source.client_secret if isinstance(self._source, ClientCredentials) else None

    async def token(self) -> str:
        source = self._source
        if isinstance(source, str):
            return source
        if isinstance(source, ClientCredentials):
            async with self._lock:
                fetched = self._fetched
                if fetched is None or not fetched.fresh(self._clock()):
                    fetched = self._fetched = await self._fetch(source)
                return fetched.value
        return await _called(source)

    async def refresh(self, rejected: str) -> str | None:
        source = self._source
        if isinstance(source, str):
            return None
        if isinstance(source, ClientCredentials):
            async with self._lock:
                fetched = self._fetched
                if fetched is None or fetched.value == rejected or not fetched.fresh(self._clock()):
                    fetched = self._fetched = await self._fetch(source)
                return fetched.value if fetched.value != rejected else None
        fresh = await _called(source)
        return fresh if fresh != rejected else None

    async def _fetch(self, credentials: ClientCredentials) -> FetchedToken:
        headers, form = token_request(credentials)
        asked_at = self._clock()
        try:
            response = await self._http.post(credentials.token_url, headers=headers, data=form)
        except httpx.TransportError as exc:
            raise unreachable(exc, _TOKEN_ENDPOINT) from exc
        return read_token_response(response, credentials, asked_at)


async def _called(source: Callable[[], str] | Callable[[], Awaitable[str]]) -> str:
    value = source()
    if inspect.isawaitable(value):
        value = await value
    return check_bearer_token(value)
