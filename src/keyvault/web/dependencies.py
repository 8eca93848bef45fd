"""FastAPI dependencies for who is calling: the bearer token, the path's sub, the scopes held.

Each is a named `Annotated` alias, so a route's signature says what it needs
(`caller: KeyReader`). The decisions are keyvault.auth's; here they meet the request: a refusal is
counted, named on the request's log line, and raised for the one problem+json mapping.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, NoReturn

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator

from keyvault.auth.subjects import SUB_MAX_LENGTH, SUB_PATTERN, sub_problem
from keyvault.auth.tokens import (
    ANY_KEY_ACCESS,
    DELETE_ACCESS,
    READ_ACCESS,
    WRITE_ACCESS,
    Access,
    Principal,
    Scope,
    TokenVerifier,
    check_access,
    is_service,
)
from keyvault.errors import (
    Forbidden,
    InsufficientUserAuthentication,
    KeySetUnavailable,
    Unauthorized,
)
from keyvault.observability import metrics


def _acceptable_subject(value: str) -> str:
    problem = sub_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


SubjectPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=SUB_MAX_LENGTH,
        description="The identity provider's subject, percent-encoded (e.g. `google-oauth2%7C1234`):"
        " no control characters, and valid UTF-8 (no U+FFFD).",
        json_schema_extra={"pattern": SUB_PATTERN},
    ),
    AfterValidator(_acceptable_subject),
]

_bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A JWT whose `scope` claim holds `api-key:read`, `api-key:write` or `api-key:delete`,"
    " and `users:any` to act on other users' keys.",
)


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> Principal:
    try:
        principal = await _verify(request, credentials)
    except Unauthorized as failure:
        metrics.AUTH_FAILURES.labels(failure.reason).inc()
        request.state.reason = failure.reason  # for the request's log line
        raise
    except KeySetUnavailable as unavailable:
        request.state.reason = unavailable.reason
        raise
    request.state.actor = principal.sub  # for the request's log line
    await request.app.keyvault.rate_limiter.enforce_for_principal(
        principal.sub, service=is_service(principal)
    )
    return principal


async def _verify(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    if credentials is None:
        raise Unauthorized("A bearer token is required.", error=None, reason="missing")
    verifier: TokenVerifier = request.app.keyvault.token_verifier
    principal = await verifier.verify(credentials.credentials)
    request.state.principal = principal  # the audit trail names the actor, even of a refusal
    return principal


Caller = Annotated[Principal, Depends(authenticate)]


def require(access: Access) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting callers with `access` to the path's `sub` (see check_access)."""

    async def check(request: Request, sub: SubjectPath, caller: Caller) -> Principal:
        try:
            check_access(caller, sub, access, request.app.keyvault.step_up, now=time.time())
        except Forbidden as forbidden:
            _refuse(request, forbidden)
        except InsufficientUserAuthentication:
            request.state.reason = "step_up"  # for the request's log line
            raise
        return caller

    return check


def _refuse(request: Request, forbidden: Forbidden) -> NoReturn:
    metrics.AUTH_FAILURES.labels(forbidden.reason).inc()
    request.state.reason = forbidden.reason  # for the request's log line
    raise forbidden


def require_scope(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting callers holding `scope`, for routes not about one user's key."""

    async def check(request: Request, caller: Caller) -> Principal:
        if scope not in caller.scopes:
            _refuse(
                request, Forbidden(f"This action needs the {scope.value} scope.", "forbidden_scope")
            )
        return caller

    return check


KeyReader = Annotated[Principal, Depends(require(READ_ACCESS))]
KeyWriter = Annotated[Principal, Depends(require(WRITE_ACCESS))]
KeyDeleter = Annotated[Principal, Depends(require(DELETE_ACCESS))]
StatusReader = Annotated[Principal, Depends(require(ANY_KEY_ACCESS))]
AuditReader = Annotated[Principal, Depends(require_scope(Scope.audit_read))]
