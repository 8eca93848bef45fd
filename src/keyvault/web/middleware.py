"""ASGI middleware: request id, address rate limit, body size limit, last-resort errors, headers."""

from __future__ import annotations

import logging
import re
import secrets
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyvault.db.engine import is_database_outage
from keyvault.errors import PayloadTooLarge, TooManyRequests
from keyvault.observability import metrics
from keyvault.observability.logs import current_request_id
from keyvault.ratelimit.limiter import RateLimiter
from keyvault.web.problems import problem_response

log = logging.getLogger("keyvault")

DATABASE_RETRY_AFTER_SECONDS = "1"
REQUEST_ID_HEADER = b"x-request-id"
HTTP1_VERSIONS: Final = frozenset({"1.0", "1.1"})
# A caller's request id is echoed into logs and headers, so only a plain token is taken as given.
_ACCEPTABLE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")

UNMATCHED_ROUTE: Final = "<unmatched>"
# The provider proxy (web.proxy_endpoint) streams bodies up to a size of its own and forwards HEAD
# as HEAD: BodySizeLimit and HeadAsGet leave its paths alone.
PROXY_PATHS: Final = "/proxy/"
KEYVAULT_REQUEST_ID_HEADER: Final = b"x-keyvault-request-id"
# Probes and the scraper must keep working while a client is being throttled.
RATE_LIMIT_EXEMPT_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})


def route_template(scope: Scope) -> str:
    """The template of the route that handled the request, as the router left it in the scope.

    A request answered before routing (413 for a declared length, 429 for its address) or matching
    no route is `<unmatched>`: its path, which may hold a sub, must not reach a log or a label.
    """
    template = getattr(scope.get("route"), "path_format", None)
    return template if isinstance(template, str) else UNMATCHED_ROUTE


class RequestId:
    """Take X-Request-ID from the caller (or make one), expose it to the request, echo it back:
    as X-Keyvault-Request-ID when the answer has an X-Request-ID of its own already (a provider's,
    through the proxy, which its SDK reports)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == REQUEST_ID_HEADER), b"")
        request_id = (
            given.decode("ascii") if _ACCEPTABLE_REQUEST_ID.match(given) else secrets.token_hex(16)
        )
        scope.setdefault("state", {})["request_id"] = request_id
        token = current_request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                taken = any(name == REQUEST_ID_HEADER for name, _ in headers)
                name = KEYVAULT_REQUEST_ID_HEADER if taken else REQUEST_ID_HEADER
                headers.append((name, request_id.encode("ascii")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)


class AddressRateLimit:
    """ASGI middleware: 429 for a client address over its budget, before the body or token is read.

    The address is the peer uvicorn reports; behind a proxy, uvicorn's FORWARDED_ALLOW_IPS decides
    whether X-Forwarded-For is believed.
    """

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] in RATE_LIMIT_EXEMPT_PATHS
            or not self.limiter.limits_addresses
        ):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        retry_after = await self.limiter.retry_after_for_address(client[0] if client else "unknown")
        if retry_after is None:
            await self.app(scope, receive, send)
            return
        metrics.RATE_LIMITED.labels("address").inc()
        response = problem_response(
            TooManyRequests.status,
            TooManyRequests.slug,
            TooManyRequests.title,
            "This client address has made too many requests; retry later.",
            {"Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with 413, whether declared by Content-Length or streamed
    (except on the proxy's paths, which count their own).

    A body without a trustworthy length (chunked, or an unreadable Content-Length) is read up front
    (at most `max_bytes` + one chunk) and replayed: raising from inside `receive` would be swallowed
    by FastAPI's body parsing as a 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(PROXY_PATHS):
            await self.app(scope, receive, send)
            return
        declared = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if declared is None and not chunked and scope.get("http_version") in HTTP1_VERSIONS:
            # Neither header: an HTTP/1 request has no body (RFC 9112 §6.3), nothing to count.
            # (HTTP/2 frames a body without either, so there it is read up front.)
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        await self.app(scope, replay(messages, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"The request body is larger than {self.max_bytes} bytes."
        response = problem_response(
            PayloadTooLarge.status, PayloadTooLarge.slug, PayloadTooLarge.title, detail
        )
        await response(scope, receive, send)


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives `messages` back first, then reads on from `receive`."""
    pending = list(messages)

    async def replaying_receive() -> Message:
        return pending.pop(0) if pending else await receive()

    return replaying_receive


class LastResortErrors:
    """Turn anything unhandled into problem+json without letting its message reach a log or a body.

    Starlette's own server-error middleware re-raises after responding, and the server then logs the
    exception's text; an exception text can quote a value, so it must stop here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if started:
                log.error(
                    "unhandled %s after the response started",
                    type(error).__name__,
                    exc_info=error,
                    extra={"event": "unhandled_error", "route": route_template(scope)},
                )
                return
            await _respond_to_unexpected(error, scope, receive, send)


async def _respond_to_unexpected(
    error: Exception, scope: Scope, receive: Receive, send: Send
) -> None:
    if is_database_outage(error):
        metrics.DATABASE_UNAVAILABLE.inc()
        log.warning(
            "database unavailable (%s)",
            type(error).__name__,
            extra={"event": "database_unavailable"},
        )
        response = problem_response(
            503,
            "database-unavailable",
            "Database unavailable",
            "The database cannot be reached right now; retry shortly.",
            {"Retry-After": DATABASE_RETRY_AFTER_SECONDS},
        )
    else:
        # The route's template, never the path: a path names the user it is about. exc_info gives
        # the line the exception's type and frames (logs.JsonFormatter), never its message.
        log.error(
            "unhandled %s on %s %s",
            type(error).__name__,
            scope["method"],
            route_template(scope),
            exc_info=error,
            extra={"event": "unhandled_error", "route": route_template(scope)},
        )
        response = problem_response(
            500, "internal-error", "Internal server error", "An unexpected error occurred."
        )
    await response(scope, receive, send)


class SecurityHeaders:
    """`nosniff` on every response; `Cache-Control: no-store` on every one that sets no policy.

    no-store by default, not route by route: a key (or a user's key status) must never sit in a
    browser or proxy cache, and a new route that carries one is covered without anyone
    remembering. Only what is safe to cache (the docs page's static assets) says so itself.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"x-content-type-options" not in names:  # a provider's own, through the proxy
                    headers.append((b"x-content-type-options", b"nosniff"))
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
