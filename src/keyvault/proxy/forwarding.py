"""Forwarding a call to its provider: one pooled HTTP client per provider, the request body
streamed as it arrives, and the answer handed back with the key redacted from it.

The clients are httpx transports, used without httpx's `Client`: no cookie jar (a cookie one
user's call was given must never ride along on another user's), no redirects followed (a 3xx goes
back to the caller as it is), no retries. KEYVAULT_PROXY_TIMEOUT bounds the connect and every wait
for the provider's next bytes, so a stream that keeps sending is never cut; an answer that stops
is. An answer with a Content-Length of at most BUFFERED_BODY_MAX bytes is read whole, redacted and
passed on with its new length; any other body is passed on chunk by chunk as it arrives
(keyvault.proxy.redaction holds back only what could be the start of the key), without a
Content-Length. A failure is ProviderUnavailable (502) or ProviderTimeout (504), logged with the
provider's name and the error's type only: httpx's messages may hold the URL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Final

import httpx

from keyvault.errors import PathNotProxied, Problem, ProviderTimeout, ProviderUnavailable
from keyvault.providers.registry import Provider, Providers
from keyvault.proxy.headers import Headers, ProviderHeaders, downstream
from keyvault.proxy.paths import PathRules, requested_path
from keyvault.proxy.redaction import Redactor

log = logging.getLogger("keyvault")

BUFFERED_BODY_MAX: Final = 1024 * 1024
IDLE_CONNECTIONS: Final = 64  # kept open per provider for the next call
IDLE_SECONDS: Final = 30.0
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_TIMED_OUT: Final = "The provider did not answer within KEYVAULT_PROXY_TIMEOUT; try again later."
_UNREACHABLE: Final = "The provider could not be reached, or broke off its answer."


class ProviderUpstream:
    """One provider: its allowed paths, its headers, and its pooled connections."""

    def __init__(self, provider: Provider, timeout: float) -> None:
        self.provider = provider
        self.headers = ProviderHeaders(provider)
        self._rules = PathRules(provider.proxy_paths)
        self._timeouts = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        self._transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=IDLE_CONNECTIONS,
                keepalive_expiry=IDLE_SECONDS,
            ),
            retries=0,
        )

    def destination(self, raw_path: bytes) -> tuple[str, str]:
        """(the allowed pattern, the provider path) that a request path after
        `/proxy/{provider}/` names; PathNotProxied when it is not allowed."""
        path = requested_path(raw_path)
        pattern = self._rules.match(path) if path is not None else None
        if pattern is None or path is None:
            raise PathNotProxied()
        return pattern, path

    async def send(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: Headers,
        body: AsyncIterable[bytes] | None,
        api_key: str,
        token: str,
    ) -> Answer:
        """Send the call with `api_key`, the caller's headers less any that carry its keyvault
        `token`; the answer once its head (and a small body) has arrived. An exception that `body`
        raises (the caller went away, the body is too large) ends the call as it is."""
        url = self.provider.url(path)
        if query:
            url = f"{url}?{query.decode('latin-1')}"
        request = httpx.Request(
            method,
            url,
            headers=self.headers.upstream(headers, api_key, token.encode("latin-1")),
            content=body,
            extensions={"timeout": self._timeouts},
        )
        redactor = Redactor(api_key)
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.HTTPError as error:
            raise failure(self.provider.name, error) from None
        answer = Answer(self.provider.name, method, response, redactor)
        try:
            await answer.read_small_body()
        except BaseException:
            await answer.aclose()
            raise
        return answer

    async def aclose(self) -> None:
        await self._transport.aclose()


def failure(provider: str, error: httpx.HTTPError) -> Problem:
    """The refusal for a call that failed with `error`, logged without its message."""
    timed_out = isinstance(error, httpx.TimeoutException)
    log.warning(
        "proxied call to %s failed (%s)",
        provider,
        type(error).__name__,
        extra={"event": "proxy_failed", "reason": "timeout" if timed_out else "unreachable"},
    )
    return ProviderTimeout(_TIMED_OUT) if timed_out else ProviderUnavailable(_UNREACHABLE)


class Answer:
    """The provider's answer, as it goes back: status, headers (filtered, redacted) and body."""

    __slots__ = ("_body", "_chunks", "_provider", "_redactor", "_response", "headers", "status")

    def __init__(
        self, provider: str, method: str, response: httpx.Response, redactor: Redactor
    ) -> None:
        self._provider = provider
        self._response = response
        self._redactor = redactor
        self.status = response.status_code
        raw = response.headers.raw
        self._body: bytes | None = None
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        decoded = encoding not in ("", "identity")
        if method == "HEAD" or self.status in _NO_BODY_STATUSES or self.status < 200:
            self._body = b""  # none, whatever Content-Length says (it describes the GET's body)
            self.headers = downstream(raw, redactor, same_length=True, decoded=False)
        else:
            self.headers = downstream(raw, redactor, same_length=False, decoded=decoded)
        self._chunks: AsyncIterator[bytes] = (
            response.aiter_bytes() if decoded else response.aiter_raw()
        )

    @property
    def whole(self) -> bytes | None:
        """The body, redacted, when it was read whole (its Content-Length is in the headers)."""
        return self._body

    @property
    def received(self) -> int:
        """Body bytes received from the provider so far (as sent, compressed or not)."""
        return self._response.num_bytes_downloaded

    async def read_small_body(self) -> None:
        if self._body is not None:
            return
        length = self._response.headers.get("content-length", "")
        if not (length.isdigit() and int(length) <= BUFFERED_BODY_MAX):
            return
        parts = [chunk async for chunk in self._guarded(self._chunks)]
        self._body = self._redactor.text(b"".join(parts))
        self.headers.append((b"content-length", str(len(self._body)).encode()))

    async def body(self) -> AsyncIterator[bytes]:
        """The body, redacted: a read one whole, or a stream chunk by chunk (nothing empty)."""
        if self._body is not None:
            if self._body:
                yield self._body
            return
        async for chunk in self._guarded(self._chunks):
            redacted = self._redactor.feed(chunk)
            if redacted:
                yield redacted
        rest = self._redactor.flush()
        if rest:
            yield rest

    async def _guarded(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        except httpx.HTTPError as error:
            raise failure(self._provider, error) from None

    async def aclose(self) -> None:
        await self._response.aclose()


class Upstreams:
    """The proxy's providers, each with its own pooled client, for the process's lifetime."""

    def __init__(self, providers: Providers, timeout: float) -> None:
        self._by_name = {
            provider.name: ProviderUpstream(provider, timeout) for provider in providers
        }

    def get(self, name: str) -> ProviderUpstream | None:
        return self._by_name.get(name)

    async def aclose(self) -> None:
        for upstream in self._by_name.values():
            await upstream.aclose()
