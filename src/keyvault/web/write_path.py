"""PUT /users/{sub}/api-key on a short path around FastAPI's per-request machinery.

The write's counterpart of keyvault.read_path: FastAPI's router, body parsing and dependency
injection cost more CPU than the write does itself (README, Performance). A PUT has a body, and
whether the body is valid decides which path answers it, so this path is the innermost middleware
rather than a wrapper in front of the app: it runs inside keyvault's own middleware (request id,
telemetry, security headers, address rate limit, body size limit, last-resort errors), and a
request it does not take goes on to the FastAPI router with its body given back as it arrived.

    PUT on the write route, a JSON body, a bearer token that verifies, access allowed for the sub,
        a body FastAPI would accept as ApiKeyWrite (pure checks; anything else goes on to the
        FastAPI route, which answers and audits it as it does on every route)
    → principal rate limit → seal, store and audit event in one shared transaction → 200 or 201

A refusal that can only come after a side effect (429, 412, 503) is answered by the FastAPI app's
own exception handler for `Problem` (keyvault.short_paths), which records the audit event exactly
as it does for the FastAPI route. tests/api/test_write_paths_agree.py sends the same requests down
both paths and compares them.
"""

from __future__ import annotations

from typing import Any

from fastapi import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyvault.audit.events import Action
from keyvault.audit.trail import RequestAudit
from keyvault.auth.tokens import WRITE_ACCESS, permitted_caller
from keyvault.keys import service
from keyvault.keys.preconditions import precondition_of
from keyvault.keys.schemas import ApiKeyWrite
from keyvault.web import key_routes as api
from keyvault.web.json_body import read_json
from keyvault.web.middleware import replay
from keyvault.web.short_paths import answer_audited


class WritePath:
    """Serves the requests to `route` that it can answer on the short path; see the module doc."""

    def __init__(self, app: ASGIApp, route: APIRoute) -> None:
        self.app = app
        self._route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "PUT":
            await self.app(scope, receive, send)
            return
        match, child_scope = self._route.matches(scope)
        headers = _WriteHeaders(scope["headers"])
        principal = None
        if match is Match.FULL and headers.json_body:
            principal = await permitted_caller(
                scope["app"].state,
                headers.authorization,
                child_scope["path_params"]["sub"],
                WRITE_ACCESS,
            )
        if principal is None:
            await self.app(scope, receive, send)
            return
        messages = await _body_messages(receive)
        write = None
        if all(message["type"] == "http.request" for message in messages):  # not cut off
            write = _parsed(b"".join(message.get("body", b"") for message in messages))
        if write is None:
            await self.app(scope, replay(messages, receive), send)
            return
        scope.update(child_scope)
        state = scope.setdefault("state", {})
        state["principal"] = principal  # as auth.authenticate leaves them, for audit and log line
        state["actor"] = principal.sub
        await _write(scope, receive, send, write, headers)


class _WriteHeaders:
    """What a PUT's headers say, read in one pass, the way FastAPI reads them: the first one wins,
    but the conditional headers are lists, whose field lines are all kept (RFC 9110, 5.3)."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.json_body = False
        self.authorization: str | None = None
        self.if_match: list[str] | None = None
        self.if_none_match: list[str] | None = None
        seen: set[bytes] = set()
        for name, value in raw:
            if name == b"if-match":
                self.if_match = [*(self.if_match or ()), value.decode("latin-1")]
                continue
            if name == b"if-none-match":
                self.if_none_match = [*(self.if_none_match or ()), value.decode("latin-1")]
                continue
            if name in seen:
                continue
            seen.add(name)
            if name == b"content-type":
                media_type = value.split(b";", 1)[0].strip().lower()
                self.json_body = media_type == b"application/json"
            elif name == b"authorization":
                self.authorization = value.decode("latin-1")


async def _body_messages(receive: Receive) -> list[Message]:
    """The request's body messages, all of them (middleware.BodySizeLimit bounds their size); the
    last is an http.disconnect when the client went away before the body ended."""
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _parsed(body: bytes) -> ApiKeyWrite | None:
    """The body as the FastAPI route reads it (keyvault.json_body, then the model), or None when
    it would refuse it: the FastAPI route then gives its own answer, 422, and records it."""
    try:
        return ApiKeyWrite.model_validate(read_json(body))
    except ValidationError:
        return None


async def _write(
    scope: Scope, receive: Receive, send: Send, write: ApiKeyWrite, headers: _WriteHeaders
) -> None:
    """The endpoint: the FastAPI route's own work, with its writer dependency."""

    async def put(state: Any, sub: str, audit: RequestAudit) -> Response:
        result = await service.put_api_key_audited(
            state.key_writes,
            state.keyring,
            sub,
            write.api_key.get_secret_value(),
            precondition_of(headers.if_match, headers.if_none_match),
            audit.success_event(),
        )
        audit.recorded = True  # committed with the change
        return api.written_response(result)

    await answer_audited(scope, receive, send, Action.put, put)
