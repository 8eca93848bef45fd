"""Forwarding a call to its provider: one pooled HTTP client per provider, the request body
streamed as it arrives, and the answer handed back with the key redacted from it.

Each provider's client is a pool of httpcore's HTTP/1.1 connections (the core of httpx) over
asyncio sockets (keyvault.proxy.network), without httpx's `Client`: no cookie jar (a cookie one user's call
was given must never ride along on another user's), no redirects followed (a 3xx goes back to the
caller as it is), no retries. KEYVAULT_PROXY_TIMEOUT bounds the connect and every wait for the
provider's next bytes, so a stream that keeps sending is never cut; an answer that stops is. An
answer with a Content-Length of at most BUFFERED_BODY_MAX bytes is read whole, redacted and passed
on with its new length; any other body is passed on chunk by chunk as it arrives
(keyvault.proxy.redaction holds back only what could be the start of the key), without a
Content-Length. A compressed answer (the provider ignored `Accept-Encoding: identity`) is
decompressed on the way when it is gzip or deflate, and refused otherwise: what cannot be read
cannot be redacted. A failure is ProviderUnavailable (502) or ProviderTimeout (504), logged with
the provider's name and the error's type only.
"""

from __future__ import annotations

import logging
import urllib.parse
import zlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Final

import httpcore
import httpx

from keyvault.errors import PathNotProxied, Problem, ProviderTimeout, ProviderUnavailable
from keyvault.providers.registry import Provider, Providers
from keyvault.proxy.decoding import WINDOW_BITS, Decoder
from keyvault.proxy.headers import Headers, ProviderHeaders, downstream
from keyvault.proxy.network import Connections
from keyvault.proxy.paths import PathRules, requested_path
from keyvault.proxy.redaction import Redactor

log = logging.getLogger("keyvault")

BUFFERED_BODY_MAX: Final = 1024 * 1024
IDLE_CONNECTIONS: Final = 64  # kept open per provider for the next call
IDLE_SECONDS: Final = 30.0
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_FAILURES: Final = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
    zlib.error,
)
_TIMED_OUT: Final = "The provider did not answer within KEYVAULT_PROXY_TIMEOUT; try again later."
_UNREACHABLE: Final = "The provider could not be reached, or broke off its answer."
_UNREADABLE: Final = "The provider answered in an encoding keyvault cannot read, so it was dropped."


class ProviderUpstream:
    """One provider: its allowed paths, its headers, and its pooled connections."""

    def __init__(self, provider: Provider, timeout: float) -> None:
        self.provider = provider
        self.headers = ProviderHeaders(provider)
        self._rules = PathRules(provider.proxy_paths)
        self._timeouts = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        base = urllib.parse.urlsplit(provider.base_url)
        self._scheme = base.scheme.encode()
        self._host = (base.hostname or "").encode()
        self._port = base.port or (443 if base.scheme == "https" else 80)
        self._host_header = (b"host", base.netloc.encode())
        self._base_path = base.path.rstrip("/").encode()
        self._pool = Connections(
            httpcore.Origin(self._scheme, self._host, self._port),
            # httpx's CA bundle, as the key checks on save use
            httpx.create_ssl_context() if base.scheme == "https" else None,
            IDLE_CONNECTIONS,
            IDLE_SECONDS,
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
        target = b"%s/%s" % (self._base_path, path.encode())
        if query:
            target += b"?" + query
        sent = [
            self._host_header,
            *self.headers.upstream(headers, api_key, token.encode("latin-1")),
        ]
        if body is not None and not any(name == b"content-length" for name, _ in sent):
            sent.append((b"transfer-encoding", b"chunked"))
        request = httpcore.Request(
            method.encode(),
            httpcore.URL(scheme=self._scheme, host=self._host, port=self._port, target=target),
            headers=sent,
            content=body,
            extensions={"timeout": self._timeouts},
        )
        try:
            response = await self._pool.send(request)
        except _FAILURES as error:
            raise failure(self.provider.name, error) from None
        try:
            answer = Answer(self.provider.name, method, response, Redactor(api_key))
            await answer.read_small_body()
        except BaseException:
            await response.aclose()
            raise
        return answer

    async def aclose(self) -> None:
        await self._pool.aclose()


def failure(provider: str, error: Exception) -> Problem:
    """The refusal for a call that failed with `error`, logged without its message."""
    timed_out = isinstance(error, httpcore.TimeoutException)
    log.warning(
        "proxied call to %s failed (%s)",
        provider,
        type(error).__name__,
        extra={"event": "proxy_failed", "reason": "timeout" if timed_out else "unreachable"},
    )
    return ProviderTimeout(_TIMED_OUT) if timed_out else ProviderUnavailable(_UNREACHABLE)


class Answer:
    """The provider's answer, as it goes back: status, headers (filtered, redacted) and body."""

    __slots__ = (
        "_body",
        "_decoder",
        "_provider",
        "_redactor",
        "_response",
        "headers",
        "received",
        "status",
    )

    def __init__(
        self, provider: str, method: str, response: httpcore.Response, redactor: Redactor
    ) -> None:
        self._provider = provider
        self._response = response
        self._redactor = redactor
        self.status = response.status
        self.received = 0  # body bytes from the provider so far, as sent (compressed or not)
        self._body: bytes | None = None
        self._decoder: Decoder | None = None
        raw = response.headers
        encodings = [
            value.strip().lower() for name, value in raw if name.lower() == b"content-encoding"
        ]
        if method == "HEAD" or self.status in _NO_BODY_STATUSES or self.status < 200:
            self._body = b""  # none, whatever Content-Length says (it describes the GET's body)
            self.headers = downstream(raw, redactor, same_length=True, decoded=False)
            return
        encoding = b",".join(encodings)
        if encoding not in (b"", b"identity"):
            if encoding not in WINDOW_BITS:
                log.warning(
                    "proxied call to %s answered in an unreadable encoding",
                    provider,
                    extra={"event": "proxy_failed", "reason": "encoding"},
                )
                raise ProviderUnavailable(_UNREADABLE)
            self._decoder = Decoder(WINDOW_BITS[encoding])
        self.headers = downstream(
            raw, redactor, same_length=False, decoded=self._decoder is not None
        )

    @property
    def whole(self) -> bytes | None:
        """The body, redacted, when it was read whole (its Content-Length is in the headers)."""
        return self._body

    async def read_small_body(self) -> None:
        if self._body is not None or self._decoder is not None:
            return
        length = next(
            (value for name, value in self._response.headers if name.lower() == b"content-length"),
            b"",
        )
        if not (length.isdigit() and int(length) <= BUFFERED_BODY_MAX):
            return
        parts = [chunk async for chunk in self._chunks()]
        self._body = self._redactor.text(b"".join(parts))
        self.headers.append((b"content-length", b"%d" % len(self._body)))

    async def body(self) -> AsyncIterator[bytes]:
        """The body, redacted: a read one whole, or a stream chunk by chunk (nothing empty)."""
        if self._body is not None:
            if self._body:
                yield self._body
            return
        async for chunk in self._chunks():
            redacted = self._redactor.feed(chunk)
            if redacted:
                yield redacted
        rest = self._redactor.flush()
        if rest:
            yield rest

    async def _chunks(self) -> AsyncIterator[bytes]:
        stream = self._response.stream
        assert isinstance(stream, AsyncIterable)
        try:
            async for chunk in stream:
                self.received += len(chunk)
                if self._decoder is None:
                    yield chunk
                else:
                    for piece in self._decoder.decode(chunk):
                        yield piece
            if self._decoder is not None:
                yield self._decoder.finish()
        except _FAILURES as error:
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
