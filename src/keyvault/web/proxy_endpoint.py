"""The provider proxy, served: any method on `/proxy/{provider}/{path}` goes to the provider's base
URL and `{path}`, with the query string, carrying the user's own key; the answer streams back
(keyvault.proxy does the forwarding). A service calls a provider for a user without ever holding
the user's key, with the provider's own SDK pointed at `/proxy/{provider}`.

One lean ASGI endpoint, as the key operations are (web.key_endpoints), taking its steps in order:

    audit entry → keyvault token, from `Authorization: Bearer` or the provider's key header (401)
    → rate limit (429) → the user: `X-Keyvault-User` (the sub, percent-encoded) or the token's own
    (422) → `api-key:use` for that user (403) → a configured provider (404) → an allowed path (404)
    → a declared body within KEYVAULT_PROXY_MAX_BODY_BYTES (413) → the user's key, not expired
    (404), one a header can carry (422) → the call (502, 504; 413 for a body that grows too large) → the answer, streamed → its
    audit event

Nothing goes upstream before every check has passed, and each refusal's audit event is stored
before it is answered. A forwarded call's event names the provider's status, the duration and the
bytes each way, so it is stored once the answer has been passed on: by then the call has been
made, and holding its answer back for the commit would add one to every call's latency. The key's
record was read from the same database just before; an event that cannot be stored is logged and
counted (keyvault_proxy_unaudited_total). A caller that goes away cancels the call; a provider that
breaks off after its answer began leaves the caller's connection cut, never a complete-looking
answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Final

from fastapi.routing import APIRoute
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from keyvault.audit.events import Action, Outcome, UpstreamCall, outcome_for
from keyvault.audit.trail import RequestAudit
from keyvault.auth.tokens import USE_ACCESS, bearer_token
from keyvault.db.engine import is_database_outage
from keyvault.errors import (
    AuditUnavailable,
    ClientClosedRequest,
    InvalidRequest,
    PathNotProxied,
    PayloadTooLarge,
    Problem,
    ProviderUnavailable,
    UnknownProvider,
)
from keyvault.keys import service
from keyvault.observability import metrics
from keyvault.providers.registry import Provider
from keyvault.proxy.forwarding import Answer, ProviderUpstream
from keyvault.web.endpoint_steps import NOT_READY, admit, answer_refusal, authenticate
from keyvault.web.key_bodies import sub_reasons
from keyvault.web.problems import problem_answer
from keyvault.web.state import AppState, HoldsState

log = logging.getLogger("keyvault")

PROXY_PREFIX: Final = "/proxy/"
UNSENDABLE: Final = (
    "The user's key for this provider holds characters that cannot be sent in an HTTP header"
    " (only printable ASCII can); nothing was sent. Store a key the provider can take."
)
USER_HEADER: Final = b"x-keyvault-user"
_FAILED: Final = "The call to the provider failed; nothing more is known. Try again later."
_USER_WHERE: Final = ("header", "X-Keyvault-User")


class ProviderProxy:
    """Sits in front of FastAPI's router: serves `/proxy/…`, hands every other path on."""

    def __init__(self, app: ASGIApp, keyvault: HoldsState, documented: APIRoute) -> None:
        self.app = app
        self._keyvault = keyvault
        self._route = documented  # its `path_format` names the request in logs and metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROXY_PREFIX):
            await self.app(scope, receive, send)
            return
        state = self._keyvault.keyvault
        if state is None:  # not started, or stopping
            await problem_answer(NOT_READY)(scope, receive, send)
            return
        scope["route"] = self._route
        await _serve(state, scope, receive, send)


class _Heads:
    """What the endpoint reads from the request's headers, in one pass."""

    __slots__ = ("authorization", "chunked", "key_header", "length", "users")

    def __init__(self, scope: Scope, key_header: bytes | None) -> None:
        self.authorization: bytes | None = None
        self.key_header: bytes | None = None
        self.length: bytes | None = None
        self.chunked = False
        self.users: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                self.authorization = value
            elif name == key_header:
                self.key_header = value
            elif name == USER_HEADER:
                self.users.append(value)
            elif name == b"content-length":
                self.length = value
            elif name == b"transfer-encoding":
                self.chunked = True

    def token(self) -> str | None:
        """keyvault's token: `Authorization: Bearer …`, else the provider's own key header."""
        if self.authorization is not None:
            token = bearer_token(self.authorization.decode("latin-1"))
            if token is not None:
                return token
        if self.key_header is not None:
            return self.key_header.decode("latin-1").strip() or None
        return None

    def named_user(self) -> tuple[str | None, list[str]]:
        """The sub `X-Keyvault-User` names (None when absent), and why it is refused."""
        if not self.users:
            return None, []
        if len(self.users) > 1:
            return None, ["header.X-Keyvault-User: must be given once"]
        raw = self.users[0]
        if not raw.isascii():
            return None, ["header.X-Keyvault-User: must be the sub, percent-encoded"]
        sub = urllib.parse.unquote(raw.decode("ascii"), errors="replace")  # U+FFFD: refused below
        reasons = sub_reasons(sub, _USER_WHERE)
        return (None if reasons else sub), reasons

    def has_body(self, max_bytes: int) -> bool:
        """Whether a body follows; 413 when its declared length is over `max_bytes`."""
        if self.length is not None:
            if not self.length.isdigit():
                raise InvalidRequest("header.Content-Length: must be a number of bytes")
            if int(self.length) > max_bytes:
                raise PayloadTooLarge(f"The request body is larger than {max_bytes} bytes.")
            return int(self.length) > 0
        return self.chunked


async def _serve(state: AppState, scope: Scope, receive: Receive, send: Send) -> None:
    raw = (scope.get("raw_path") or scope["path"].encode()).partition(b"?")[0]
    name, slash, rest = raw.removeprefix(PROXY_PREFIX.encode()).partition(b"/")
    if not raw.startswith(PROXY_PREFIX.encode()):  # the prefix itself percent-encoded
        name, slash = scope["path"][len(PROXY_PREFIX) :].partition("/")[0].encode(), b""
    provider = name.decode("latin-1")
    upstream = state.proxy.get(provider)
    heads = _Heads(scope, upstream.headers.key_header if upstream is not None else None)
    named, reasons = heads.named_user()
    scope["path_params"] = {"provider": provider, "sub": named}
    audit = RequestAudit(state.audit, scope, Action.use, provider)
    audit.call = call = UpstreamCall()
    token = heads.token()
    try:
        principal = await authenticate(state, scope, token)
        if reasons:
            raise InvalidRequest("; ".join(reasons))
        sub = named if named is not None else principal.sub
        scope["path_params"]["sub"] = sub
        admit(state, scope, principal, sub, USE_ACCESS)
        if upstream is None:
            raise UnknownProvider()
        if not slash:
            raise PathNotProxied()
        call.path, path = upstream.destination(rest)
        has_body = heads.has_body(state.proxy_max_body_bytes)
        keyring = state.keyring
        api_key, version = await service.key_for_use(
            state.record_reader,
            keyring.current,
            sub,
            upstream.provider.name,
            reload=keyring.for_key_id,
        )
        if not Provider.sendable(api_key.get_secret_value()):
            raise InvalidRequest(UNSENDABLE)
    except Problem as problem:
        response = await answer_refusal(audit, problem)
        await response(scope, receive, send)
        return
    except Exception as error:
        if not audit.recorded and not is_database_outage(error):
            with contextlib.suppress(AuditUnavailable):
                await audit.failed(error)
        raise
    assert token is not None  # authenticated
    call_with = (api_key, token)
    await _forward(state, upstream, path, call_with, version, has_body, audit, scope, receive, send)


async def _forward(
    state: AppState,
    upstream: ProviderUpstream,
    path: str,
    call_with: tuple[SecretStr, str],
    version: int,
    has_body: bool,
    audit: RequestAudit,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """The call itself, with the user's key (and none of the caller's headers that carry its
    keyvault token), its answer passed on as it arrives, its audit event and its metrics."""
    assert audit.call is not None
    call = audit.call
    provider = upstream.provider.name
    caller = Caller(receive, state.proxy_max_body_bytes)
    answer: Answer | None = None
    problem: Problem | None = None
    started = time.perf_counter()
    try:
        try:
            if not has_body:
                caller.watch()
            answer = await upstream.send(
                scope["method"],
                path,
                scope["query_string"],
                scope["headers"],
                caller.body() if has_body else None,
                call_with[0].get_secret_value(),
                call_with[1],
            )
            call.upstream_status = answer.status
            await _pass_on(answer, caller, send)
        finally:
            caller.finish()
            if answer is not None:
                await answer.aclose()
    except asyncio.CancelledError:
        if not caller.gone:
            raise
        _uncancel()
        problem = ClientClosedRequest()
    except Problem as refused:
        problem = ClientClosedRequest() if caller.gone else refused
    except Exception as error:  # e.g. h11 refusing what it was to send: still answered, audited
        log.error(
            "proxied call to %s failed unexpectedly (%s)",
            provider,
            type(error).__name__,
            extra={"event": "proxy_failed", "reason": "unexpected"},
        )
        problem = ClientClosedRequest() if caller.gone else ProviderUnavailable(_FAILED)
    seconds = _measure(call, caller, answer, started)
    # What the caller got: the provider's status once its answer began (unless it went away).
    got = problem.status if problem is not None and (caller.gone or not caller.started) else None
    status = got if got is not None else call.upstream_status
    _count(provider, status, problem, call, seconds)
    if problem is None:
        audit.succeeded(key_version=version)
        try:
            await audit.settled()
        except AuditUnavailable:
            _unrecorded(provider, status)
        return
    try:
        await audit.failed(problem, key_version=version)
    except AuditUnavailable as unavailable:
        if caller.started or caller.gone:
            _unrecorded(provider, status)
        problem = unavailable
    if caller.gone and not caller.started:
        scope["state"]["status"] = problem.status  # for the log line: 499, never answered
    elif not caller.started:
        await problem_answer(problem)(scope, receive, send)
    # A provider that broke off after its answer began: the response stays incomplete and the
    # server closes the connection, so the caller sees a cut answer, never a complete-looking one.


def _measure(call: UpstreamCall, caller: Caller, answer: Answer | None, started: float) -> float:
    """The call's duration and bytes each way, so far, into its audit record; its seconds."""
    seconds = time.perf_counter() - started
    call.duration_ms = round(seconds * 1000)
    call.request_bytes = caller.received
    call.response_bytes = answer.received if answer is not None else 0
    return seconds


async def _pass_on(answer: Answer, caller: Caller, send: Send) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
    caller.started = True
    if answer.whole is not None:
        caller.finish()
        await send({"type": "http.response.body", "body": answer.whole, "more_body": False})
        return
    async for chunk in answer.body():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    caller.finish()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _count(
    provider: str, status: int | None, problem: Problem | None, call: UpstreamCall, seconds: float
) -> None:
    outcome = outcome_for(problem) if problem is not None else Outcome.ok
    metrics.PROXY_CALLS.labels(provider, str(status), outcome.value).inc()
    metrics.PROXY_DURATION.labels(provider).observe(seconds)
    metrics.PROXY_BYTES.labels(provider, "request").inc(call.request_bytes or 0)
    metrics.PROXY_BYTES.labels(provider, "response").inc(call.response_bytes or 0)


def _unrecorded(provider: str, status: int | None) -> None:
    metrics.PROXY_UNAUDITED.labels(provider).inc()
    log.error(
        "the audit event of a proxied call to %s (status %s) could not be stored",
        provider,
        status,
        extra={"event": "proxy_call_unaudited"},
    )


class Caller:
    """The caller's side of a call: its body as it arrives, counted against the cap; once the body
    is in, a watch for the caller going away, which cancels the call; whether the answer began."""

    __slots__ = (
        "_max_bytes",
        "_receive",
        "_task",
        "_watcher",
        "forwarding",
        "gone",
        "received",
        "started",
    )

    def __init__(self, receive: Receive, max_bytes: int) -> None:
        self._receive = receive
        self._max_bytes = max_bytes
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = None
        self.forwarding = True
        self.gone = False
        self.received = 0
        self.started = False

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] != "http.request":
                self.gone = True
                raise ClientClosedRequest()
            chunk = message.get("body", b"")
            self.received += len(chunk)
            if self.received > self._max_bytes:
                raise PayloadTooLarge(f"The request body is larger than {self._max_bytes} bytes.")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                break
        self.watch()

    def watch(self) -> None:
        if self._watcher is None and self.forwarding:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if self.forwarding and self._task is not None:
            self.gone = True
            self._task.cancel()

    def finish(self) -> None:
        """The call no longer needs watching: its answer is complete, or it failed."""
        self.forwarding = False
        if self._watcher is not None:
            self._watcher.cancel()
