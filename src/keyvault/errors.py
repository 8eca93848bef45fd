"""The errors keyvault answers with, and the one place they become RFC 9457 problem+json.

Services raise `Problem` subclasses; no route builds an error response by hand. Every detail is
written here or by a service from fixed text: nothing from the request body, a token or a key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyvault.http_methods import allowed_methods

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://keyvault.dev/problems/"


class Problem(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class Unauthorized(Problem):
    """`reason` is a fixed word for metrics (`expired`, `bad_signature`, …), never shown to callers."""

    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(
        self, detail: str, error: str | None = "invalid_token", reason: str = "invalid"
    ) -> None:
        challenge = "Bearer" if error is None else f'Bearer error="{error}"'
        super().__init__(detail, {"WWW-Authenticate": challenge})
        self.reason = reason


class InsufficientUserAuthentication(Unauthorized):
    """RFC 9470: the token is valid but its authentication is too weak or too old for this action."""

    def __init__(self, detail: str, acr_values: str | None, max_age: int | None) -> None:
        challenge = f'Bearer error="insufficient_user_authentication", error_description="{detail}"'
        if acr_values:
            challenge += f', acr_values="{acr_values}"'
        if max_age is not None:
            challenge += f', max_age="{max_age}"'
        Problem.__init__(self, detail, {"WWW-Authenticate": challenge})


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Not allowed"

    def __init__(self, detail: str, reason: str = "forbidden_scope") -> None:
        super().__init__(detail, {"WWW-Authenticate": 'Bearer error="insufficient_scope"'})
        self.reason = reason


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class PreconditionFailed(Problem):
    status, slug, title = 412, "precondition-failed", "Precondition failed"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class InvalidRequest(Problem):
    status, slug, title = 422, "invalid-request", "Invalid request"


class TooManyRequests(Problem):
    status, slug, title = 429, "too-many-requests", "Too many requests"

    def __init__(self, detail: str, retry_after_seconds: int) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after_seconds)})


class RecordUndecryptable(Problem):
    status, slug, title = 500, "record-undecryptable", "Stored key cannot be decrypted"


class ServiceUnavailable(Problem):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


class AuditUnavailable(ServiceUnavailable):
    """The audit event could not be stored, so the operation it describes did not happen."""

    slug, title = "audit-unavailable", "Audit trail unavailable"

    def __init__(self) -> None:
        super().__init__(
            "The audit trail cannot record this request right now; nothing was changed or returned.",
            {"Retry-After": "1"},
        )


class KeySetUnavailable(ServiceUnavailable):
    """The token names a key the identity provider's key set may hold, but the set cannot be
    fetched: the token may well be good, so this is no 401."""

    slug, title = "key-set-unavailable", "Identity provider unavailable"
    reason = "key_set_unavailable"

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(
            "The identity provider's signing keys cannot be fetched right now; retry shortly.",
            {"Retry-After": str(retry_after_seconds)},
        )


# What the app's exception handler for Problem is; the short paths call it as Starlette would.
ProblemHandler = Callable[[Request, Exception], Awaitable[Response]]


def problem_response(
    status: int, slug: str, title: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


async def _on_problem(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc.status, exc.slug, exc.title, exc.detail, exc.headers)


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own handler echoes the rejected input back; this one names fields and rules only.
    assert isinstance(exc, RequestValidationError)
    # A path parameter is validated once for each dependency declaring it (the route and its
    # access check both take `sub`): each broken rule is named once.
    reasons = "; ".join(dict.fromkeys(_describe_validation_error(error) for error in exc.errors()))
    return problem_response(422, InvalidRequest.slug, InvalidRequest.title, reasons)


def _describe_validation_error(error: Any) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "json_invalid":
        message = "body is not valid JSON"
    return f"{location}: {message}" if location else message


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = _HTTP_TITLES.get(exc.status_code, "Error")
    detail = exc.detail if isinstance(exc.detail, str) else title
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # The router's Allow names one route's methods; the path may be served by several.
        allowed = allowed_methods(request.app.router.routes, request.scope)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    return problem_response(exc.status_code, f"http-{exc.status_code}", title, detail, headers)


_HTTP_TITLES = {404: "Not found", 405: "Method not allowed", 413: "Request body too large"}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
