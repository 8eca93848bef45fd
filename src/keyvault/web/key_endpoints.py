"""The key operations, served: one lean ASGI endpoint per operation, and the matcher in front of
FastAPI's router that sends each request on a key path to its endpoint. A provider's key
(`/users/{sub}/api-keys/{provider}`) and the openai key at `/users/{sub}/api-key` are served by the
same endpoints; `GET /users/{sub}/api-keys` lists a user's keys.

Other services read a key before every call they make to a provider, so these requests are the
product's speed, and FastAPI's per-request routing, `Request` objects and dependency injection
would cost more CPU than the operation itself. Each endpoint walks the steps of the operation
documented in keyvault.web.key_routes, in the order the contract gives them:

    audit entry → bearer token verified (401) → principal rate limit (429) → sub rules (422)
    → access for the sub (403) → a configured provider (404) → for a PUT: `validate` and the body
    (413 is the middleware's, 422), preconditions (422), the provider's verdict on the key when
    asked (422, 502, 504) → the service (412 for a failed precondition) → the response

Every refusal is a `Problem`, answered by web.problems and audited with its outcome; anything else
that goes wrong is audited as an `error` and left to middleware.LastResortErrors (500, or 503 for
a database outage, which the trail on the same database could not record either).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from fastapi.routing import APIRoute
from starlette.datastructures import URL
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from keyvault.audit.events import Action
from keyvault.audit.trail import RequestAudit
from keyvault.auth.subjects import sub_problem
from keyvault.auth.tokens import (
    ANY_KEY_ACCESS,
    DELETE_ACCESS,
    READ_ACCESS,
    WRITE_ACCESS,
    Access,
    Principal,
    bearer_token,
)
from keyvault.db.engine import is_database_outage, session_scope
from keyvault.errors import AuditUnavailable, InvalidRequest, Problem
from keyvault.keys import service
from keyvault.keys.preconditions import precondition_of
from keyvault.keys.put import WriteResult
from keyvault.keys.schemas import ApiKeyRead
from keyvault.providers.validation import refusal
from keyvault.web.endpoint_steps import (
    NOT_READY,
    admit,
    answer_refusal,
    authenticate,
    known_provider,
)
from keyvault.web.key_bodies import body_reasons, read_key_write, sub_reasons, validate_flag
from keyvault.web.problems import method_not_allowed, problem_answer
from keyvault.web.routing import (
    KEY_ROUTE,
    LIST_ROUTE,
    PROVIDER_KEY_ROUTE,
    PROVIDER_STATUS_ROUTE,
    STATUS_ROUTE,
    match_key_path,
)
from keyvault.web.state import AppState, HoldsState

log = logging.getLogger("keyvault")

NO_STORE: Final = {"Cache-Control": "no-store"}

# The operation's own work, given the state, the scope, its receive, the sub, the provider's name
# as the path gave it (None for the list of all of a user's keys) and the audit entry.
Work = Callable[[AppState, Scope, Receive, str, str | None, RequestAudit], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Operation:
    action: Action
    access: Access
    work: Work
    route: APIRoute  # the documented route: its `path_format` names the request in logs, metrics
    names_provider: bool  # whether the path has a {provider} parameter


class KeyOperations:
    """Sits where FastAPI's router is: serves the key paths' operations, hands the rest on."""

    def __init__(self, app: ASGIApp, keyvault: HoldsState, documented: list[BaseRoute]) -> None:
        self.app = app
        self._keyvault = keyvault
        self._operations: dict[str, dict[str, Operation]] = {}  # by route template, by method
        for route in documented:
            assert isinstance(route, APIRoute)
            assert route.methods is not None
            for method in route.methods:
                action, access, work = SERVED[f"{method} {route.path_format}"]
                table = self._operations.setdefault(route.path_format, {})
                names_provider = route.path_format.startswith(PROVIDER_KEY_ROUTE)
                table[method] = Operation(action, access, work, route, names_provider)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        matched = match_key_path(path)
        if matched is not None:
            route, sub, provider = matched
            await self._serve(self._operations[route], sub, provider, scope, receive, send)
            return
        stripped = path.rstrip("/")
        if stripped != path and match_key_path(stripped) is not None:
            # As Starlette's router redirects a path that matches only without its slash.
            await RedirectResponse(str(URL(scope={**scope, "path": stripped})))(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)

    async def _serve(
        self,
        operations: dict[str, Operation],
        sub: str,
        provider: str | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        operation = operations.get(scope["method"])
        if operation is None:
            allowed = ["GET", "HEAD", *(m for m in ("PUT", "DELETE") if m in operations)]
            await method_not_allowed(", ".join(allowed))(scope, receive, send)
            return
        state = self._keyvault.keyvault
        if state is None:  # not started, or stopping
            await problem_answer(NOT_READY)(scope, receive, send)
            return
        scope["path_params"] = (
            {"sub": sub, "provider": provider} if operation.names_provider else {"sub": sub}
        )
        scope["route"] = operation.route
        audit = RequestAudit(state.audit, scope, operation.action, provider)
        try:
            principal = await _authenticate(state, scope)
            if sub_problem(sub) is not None:
                reasons = sub_reasons(sub)
                if operation.action is Action.put:  # its body's reasons too, as one refusal
                    reasons += await body_reasons(scope, receive)
                raise InvalidRequest("; ".join(dict.fromkeys(reasons)))
            admit(state, scope, principal, sub, operation.access)
            response = await operation.work(state, scope, receive, sub, provider, audit)
            if not audit.recorded:
                log.error("%s returned without recording its audit event", operation.route.path)
                raise AuditUnavailable()
        except Problem as problem:
            response = await answer_refusal(audit, problem)
        except Exception as error:
            if not audit.recorded and not is_database_outage(error):
                with contextlib.suppress(AuditUnavailable):
                    await audit.failed(error)
            raise
        await response(scope, receive, send)


async def _authenticate(state: AppState, scope: Scope) -> Principal:
    authorization = next(
        (value.decode("latin-1") for name, value in scope["headers"] if name == b"authorization"),
        None,
    )
    return await authenticate(state, scope, bearer_token(authorization))


async def read_api_key(
    state: AppState,
    _scope: Scope,
    _receive: Receive,
    sub: str,
    name: str | None,
    audit: RequestAudit,
) -> Response:
    provider = known_provider(state, name)
    keyring = state.keyring
    body, etag = await service.get_api_key(
        state.record_reader, keyring.current, sub, provider.name, reload=keyring.for_key_id
    )
    audit.succeeded(key_version=body.version)
    await audit.settled()  # the key never leaves before its event is committed
    return key_response(body, etag)


def key_response(body: ApiKeyRead, etag: str) -> Response:
    # Serialised once: the body is already a validated ApiKeyRead.
    return Response(
        body.model_dump_json(), media_type="application/json", headers={**NO_STORE, "ETag": etag}
    )


async def put_api_key(
    state: AppState, scope: Scope, receive: Receive, sub: str, name: str | None, audit: RequestAudit
) -> Response:
    provider = known_provider(state, name)
    validate, reasons = validate_flag(scope)
    if reasons:  # and the body's, as one refusal
        raise InvalidRequest("; ".join(reasons + await body_reasons(scope, receive)))
    write = await read_key_write(scope, receive)
    if_match: list[str] = []
    if_none_match: list[str] = []
    for header, value in scope["headers"]:
        if header == b"if-match":
            if_match.append(value.decode("latin-1"))
        elif header == b"if-none-match":
            if_none_match.append(value.decode("latin-1"))
    precondition = precondition_of(if_match, if_none_match)
    if validate:
        # Before anything is written: a key the provider does not confirm is never stored.
        verdict = await state.key_validator.check(provider, write.api_key.get_secret_value())
        audit.validation = verdict.value
        refused = refusal(verdict)
        if refused is not None:
            raise refused
    result = await service.put_api_key_audited(
        state.key_writes,
        state.keyring.for_writing(),
        sub,
        provider.name,
        write,
        precondition,
        audit.success_event(),
    )
    audit.recorded = True  # committed with the change
    return written_response(result)


def written_response(result: WriteResult) -> Response:
    return Response(
        result.status.model_dump_json(),
        status_code=201 if result.created else 200,
        media_type="application/json",
        headers={"ETag": result.etag},
    )


async def read_api_key_status(
    state: AppState,
    _scope: Scope,
    _receive: Receive,
    sub: str,
    name: str | None,
    audit: RequestAudit,
) -> Response:
    provider = known_provider(state, name)
    async with session_scope(state.sessions) as session:
        key_status, etag = await service.get_status(session, sub, provider.name)
    audit.succeeded(key_version=key_status.version)
    await audit.settled()
    headers = {"ETag": etag} if etag is not None else None
    return Response(key_status.model_dump_json(), media_type="application/json", headers=headers)


async def delete_api_key(
    state: AppState,
    _scope: Scope,
    _receive: Receive,
    sub: str,
    name: str | None,
    audit: RequestAudit,
) -> Response:
    provider = known_provider(state, name)
    async with session_scope(state.sessions) as session:
        version = await service.delete_api_key(session, sub, provider.name)
        await audit.succeeded_in(session, key_version=version)
    audit.recorded = True  # committed with the change
    return Response(status_code=204)


async def list_api_keys(
    state: AppState,
    _scope: Scope,
    _receive: Receive,
    sub: str,
    _name: str | None,
    audit: RequestAudit,
) -> Response:
    async with session_scope(state.sessions) as session:
        keys = await service.list_keys(session, sub)
    audit.succeeded(key_version=None)
    await audit.settled()
    return Response(keys.model_dump_json(), media_type="application/json")


# What serves each documented key operation, by method and route template: the openai key's
# routes and every provider's are the same endpoints.
SERVED: Final[dict[str, tuple[Action, Access, Work]]] = {
    f"GET {KEY_ROUTE}": (Action.get, READ_ACCESS, read_api_key),
    f"PUT {KEY_ROUTE}": (Action.put, WRITE_ACCESS, put_api_key),
    f"DELETE {KEY_ROUTE}": (Action.delete, DELETE_ACCESS, delete_api_key),
    f"GET {STATUS_ROUTE}": (Action.status, ANY_KEY_ACCESS, read_api_key_status),
    f"GET {PROVIDER_KEY_ROUTE}": (Action.get, READ_ACCESS, read_api_key),
    f"PUT {PROVIDER_KEY_ROUTE}": (Action.put, WRITE_ACCESS, put_api_key),
    f"DELETE {PROVIDER_KEY_ROUTE}": (Action.delete, DELETE_ACCESS, delete_api_key),
    f"GET {PROVIDER_STATUS_ROUTE}": (Action.status, ANY_KEY_ACCESS, read_api_key_status),
    f"GET {LIST_ROUTE}": (Action.list, ANY_KEY_ACCESS, list_api_keys),
}
