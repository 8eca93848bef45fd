"""One JSON log line and the HTTP metrics for every request, whichever layer answered it.

Requests are named by their route template (`/users/{sub}/api-key`), never by their path. The
actor is the verified token's `sub`, which `auth.authenticate` leaves on the request state.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Final

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyvault.observability import metrics
from keyvault.observability.logs import log_line
from keyvault.web.middleware import route_template

access_log = logging.getLogger("keyvault.access")

# Anything else is one label value, so a client inventing methods cannot inflate the metrics.
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes come every few seconds; their successes are logged at DEBUG only.
QUIET_ROUTES: Final = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestTelemetry:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Unless a response begins: 500, or what the app left as `status` (a proxied call whose
        # caller went away is 499).
        status = 0

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            unanswered = scope.get("state", {}).get("status", 500)
            _record(scope, status or unanswered, time.perf_counter() - started)


def _record(scope: Scope, status: int, seconds: float) -> None:
    route = route_template(scope)
    method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
    counter, histogram = _series(route, method, status)
    counter.inc()
    histogram.observe(seconds)

    line: dict[str, Any] = {
        "event": "request",
        "route": route,
        "method": method,
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
    }
    state = scope.get("state", {})
    # `reason`: why the token was refused, a fixed word (auth.authenticate leaves it).
    for name in ("request_id", "actor", "reason"):
        if state.get(name) is not None:
            line[name] = state[name]
    client = scope.get("client")
    if client:
        line["client"] = client[0]
    log_line(access_log, _level(route, status), line, "%s %s %d", method, route, status)


@functools.cache
def _series(route: str, method: str, status: int) -> tuple[Counter, Histogram]:
    """The request counter and duration histogram of one route, method and status, looked up once:
    `labels()` takes a lock and rebuilds its key on every call. Routes and methods are bounded
    sets (see above), and so are status codes."""
    return (
        metrics.REQUESTS.labels(route, method, str(status)),
        metrics.REQUEST_DURATION.labels(route, method),
    )


def _level(route: str, status: int) -> int:
    if status >= 500:
        return logging.ERROR if status == 500 else logging.WARNING
    if route in QUIET_ROUTES and status < 400:
        return logging.DEBUG
    return logging.INFO
