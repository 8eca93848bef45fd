"""GET /users/{sub}/api-key on a short path around FastAPI's per-request machinery.

Other services read a key before every call they make to a provider, so this route is the
product's speed. FastAPI's own middleware, router and dependency injection cost more CPU than
everything this read does itself (README, Performance), so a request that passes every check that
has no side effect is answered here, by the same pieces the FastAPI route uses:

    GET on the read route, no body, a bearer token that verifies, access allowed for the sub
        (pure checks; anything else goes to the FastAPI app untouched, which answers and audits
        it as it does on every route)
    → keyvault's own middleware (request id, telemetry, security headers, address rate limit,
      last-resort errors): the very classes the FastAPI app is wrapped in, but for the body limit
    → principal rate limit → record → decrypt → audit event committed → 200

A refusal that can only come after a side effect (429, 404, 500 for an undecryptable record, 503
when the audit trail cannot record) is answered by the FastAPI app's own exception handler for
`Problem` (keyvault.short_paths), which records the audit event exactly as it does for the
FastAPI route. tests/api/test_read_paths_agree.py sends the same requests down both paths and
compares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Response
from fastapi.routing import APIRoute
from starlette.middleware import Middleware
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from keyvault.audit.events import Action
from keyvault.audit.trail import RequestAudit
from keyvault.auth.tokens import READ_ACCESS, Principal, permitted_caller
from keyvault.keys import service
from keyvault.web import key_routes as api
from keyvault.web.middleware import BodySizeLimit
from keyvault.web.short_paths import answer_audited


class ReadPath:
    """Serves the requests to `route` that it can answer on the short path; see the module doc."""

    def __init__(self, app: FastAPI, route: APIRoute, edge: Sequence[Middleware]) -> None:
        self._app = app
        self._route = route
        self._answer: ASGIApp = self._read
        for middleware in reversed(edge):
            cls, args, kwargs = middleware
            if cls is not BodySizeLimit:  # nothing to do: this path only takes bodiless requests
                self._answer = cls(self._answer, *args, **kwargs)

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request and return True, or return False having done nothing at all."""
        if scope["type"] != "http" or scope["method"] != "GET":
            return False
        match, child_scope = self._route.matches(scope)
        if match is not Match.FULL:
            return False
        principal = await self._admitted(scope, child_scope["path_params"]["sub"])
        if principal is None:
            return False
        scope.update(child_scope)
        scope["app"] = self._app  # as Starlette sets it, for anything that reaches for request.app
        state = scope.setdefault("state", {})
        state["principal"] = principal  # as auth.authenticate leaves them, for audit and log line
        state["actor"] = principal.sub
        await self._answer(scope, receive, send)
        return True

    async def _admitted(self, scope: Scope, sub: str) -> Principal | None:
        """The caller, when the request carries no body and the checks the FastAPI route makes
        before any side effect all pass; None otherwise. Counts nothing, records nothing."""
        authorization = None
        for name, value in scope["headers"]:
            if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
                return None
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
        return await permitted_caller(self._app.state, authorization, sub, READ_ACCESS)

    async def _read(self, scope: Scope, receive: Receive, send: Send) -> None:
        await answer_audited(scope, receive, send, Action.get, _read_key)


async def _read_key(state: Any, sub: str, audit: RequestAudit) -> Response:
    """The FastAPI route's own work, with its record dependency."""
    body, etag = await service.get_api_key(state.record_reader, state.keyring, sub)
    audit.succeeded(key_version=body.version)
    await audit.settled()  # the key never leaves before its event is committed
    return api.key_response(body, etag)
