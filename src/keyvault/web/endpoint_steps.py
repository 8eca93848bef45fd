"""The steps every lean endpoint (web.key_endpoints, web.proxy_endpoint) takes the same way: the
bearer token verified and the caller's rate limit spent, the caller's access to a sub, the
provider a path names, and a refusal answered once its audit event is committed.
"""

from __future__ import annotations

import time
from typing import Final

from starlette.responses import Response
from starlette.types import Scope

from keyvault.audit.trail import RequestAudit
from keyvault.auth.tokens import Access, Principal, check_access, is_service
from keyvault.errors import (
    AuditUnavailable,
    Forbidden,
    InsufficientUserAuthentication,
    KeySetUnavailable,
    Problem,
    ServiceUnavailable,
    Unauthorized,
    UnknownProvider,
)
from keyvault.observability import metrics
from keyvault.providers.registry import Provider
from keyvault.web.problems import problem_answer
from keyvault.web.state import AppState

NOT_READY: Final = ServiceUnavailable("The keyring is not open yet.")


async def authenticate(state: AppState, scope: Scope, token: str | None) -> Principal:
    """The caller of `token`, verified once; their rate limit spent. Leaves `principal`, `actor`
    and (when refused) `reason` on the scope's state, for the audit event and the log line."""
    request_state = scope["state"]
    try:
        if token is None:
            raise Unauthorized("A bearer token is required.", error=None, reason="missing")
        principal = await state.token_verifier.verify(token)
    except Unauthorized as failure:
        metrics.AUTH_FAILURES.labels(failure.reason).inc()
        request_state["reason"] = failure.reason
        raise
    except KeySetUnavailable as unavailable:
        request_state["reason"] = unavailable.reason
        raise
    request_state["principal"] = principal
    request_state["actor"] = principal.sub
    await state.rate_limiter.enforce_for_principal(principal.sub, service=is_service(principal))
    return principal


def admit(state: AppState, scope: Scope, principal: Principal, sub: str, access: Access) -> None:
    """403 (or step-up's 401) unless `principal` has `access` to `sub`; the reason is counted and
    left on the scope's state."""
    try:
        check_access(principal, sub, access, state.step_up, now=time.time())
    except Forbidden as forbidden:
        metrics.AUTH_FAILURES.labels(forbidden.reason).inc()
        scope["state"]["reason"] = forbidden.reason
        raise
    except InsufficientUserAuthentication:
        scope["state"]["reason"] = "step_up"
        raise


def known_provider(state: AppState, name: str | None) -> Provider:
    """The configured provider the path names; 404 for any other name."""
    provider = state.providers.get(name) if name is not None else None
    if provider is None:
        raise UnknownProvider()
    return provider


async def answer_refusal(audit: RequestAudit, problem: Problem) -> Response:
    """The refusal's answer, once its audit event is committed (503 when it cannot be)."""
    if not audit.recorded and not isinstance(problem, AuditUnavailable):
        try:
            await audit.failed(problem)
        except AuditUnavailable as unavailable:
            problem = unavailable
    return problem_answer(problem)
