"""Which methods a path serves: HEAD wherever GET is served, and the `Allow` header of a 405.

HEAD is answered as the GET it stands for (RFC 9110 §9.3.2): same route, same checks, same audit
event, same status and headers (Content-Length included), and no body. The FastAPI routes declare
GET only, so /openapi.json lists GET and HEAD stays out of the schema.

A 405 from Starlette's router names the methods of the one route it tried first, though several
routes share a path (GET, PUT and DELETE of /users/{sub}/api-key are three routes); `Allow` must
list what the whole path serves, so it is worked out again from every route.
"""

from __future__ import annotations

from typing import Final

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROXY: Final = "/proxy/"
# Probed for a 405's Allow, in the order they are listed; any other method is never served here.
_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class HeadAsGet:
    """Send HEAD requests on as GET, and drop the body of their answer (except on the provider
    proxy's paths, which forward HEAD to the provider as HEAD).

    The scope's method is GET only while the request is inside: the access log line and the
    metrics, outside this middleware, say HEAD.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or scope["path"].startswith(PROXY):
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        scope["method"] = "GET"
        try:
            await self.app(scope, receive, send_without_body)
        finally:
            scope["method"] = "HEAD"


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route serves at the scope's path, HEAD along with GET; empty when no
    route has this path at all."""
    allowed = set()
    for method in _METHODS:
        # A scope of its own per probe: FastAPI's routers keep their matching state in the scope.
        probe = {**scope, "method": method, "fastapi": {}}
        probe.pop("route", None)
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            allowed.add(method)
    if "GET" in allowed:
        allowed.add("HEAD")
    return [method for method in _METHODS if method in allowed]
