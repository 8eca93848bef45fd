"""The endpoint that the key routes' short paths (keyvault.read_path, keyvault.write_path) share.

Around a route's own work it does what the FastAPI route's audit and principal rate-limit
dependencies do, in their order: the request's audit entry, the caller's rate limit, the work; and
a refusal (a `Problem`) is answered by the app's own exception handler for it, which records the
audit event exactly as it does for the FastAPI route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from starlette.types import Receive, Scope, Send

from keyvault.audit.events import Action
from keyvault.audit.trail import RequestAudit
from keyvault.auth.tokens import is_service
from keyvault.errors import Problem
from keyvault.web.problems import ProblemHandler

# The route's own work: given the app's state, the path's sub and the request's audit entry, the
# response; it records its success in the audit entry itself.
Work = Callable[[Any, str, RequestAudit], Awaitable[Response]]


async def answer_audited(
    scope: Scope, receive: Receive, send: Send, action: Action, work: Work
) -> None:
    """Answer an admitted request (its principal on the scope's state) with `work`."""
    request = Request(scope, receive)
    keyvault = scope["app"]
    state = keyvault.state
    audit = RequestAudit(state.audit, request, action)
    request.state.audit = audit
    try:
        principal = request.state.principal
        await state.rate_limiter.enforce_for_principal(principal.sub, service=is_service(principal))
        response = await work(state, scope["path_params"]["sub"], audit)
    except Problem as problem:
        on_problem: ProblemHandler = keyvault.exception_handlers[Problem]
        response = await on_problem(request, problem)
    finally:
        # The audit entry refers to the request whose state holds it: a cycle, which only the
        # garbage collector would otherwise undo, and its pauses are the slowest tail of reads.
        del scope["state"]["audit"]
    await response(scope, receive, send)
