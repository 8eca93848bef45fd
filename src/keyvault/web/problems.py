"""The one place errors become RFC 9457 problem+json: keyvault's `Problem`s, FastAPI's validation
errors and Starlette's HTTP errors, each answered with fixed text and never the input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyvault.errors import PROBLEM_JSON, PROBLEM_TYPE_BASE, InvalidRequest, Problem
from keyvault.web.http_methods import allowed_methods


def problem_response(
    status: int, slug: str, title: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def problem_answer(problem: Problem) -> JSONResponse:
    """A domain refusal's answer: its status, fixed title and detail, and its headers."""
    return problem_response(
        problem.status, problem.slug, problem.title, problem.detail, problem.headers
    )


def method_not_allowed(allow: str) -> JSONResponse:
    """405, with `Allow` naming every method the path serves."""
    return problem_response(
        405, "http-405", _HTTP_TITLES[405], "Method Not Allowed", {"Allow": allow}
    )


async def _on_problem(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_answer(exc)


async def _on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own handler echoes the rejected input back; this one names fields and rules only.
    assert isinstance(exc, RequestValidationError)
    # A path parameter is validated once for each dependency declaring it (the route and its
    # access check both take `sub`): each broken rule is named once.
    reasons = "; ".join(validation_reasons(exc.errors(), ()))
    return problem_response(422, InvalidRequest.slug, InvalidRequest.title, reasons)


def validation_reasons(errors: Iterable[Any], prefix: tuple[str, ...]) -> list[str]:
    """Each broken rule once, as `location: message` (a body's own fields without `body.`)."""
    return list(dict.fromkeys(_describe_validation_error(error, prefix) for error in errors))


def _describe_validation_error(error: Any, prefix: tuple[str, ...]) -> str:
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "extra_forbidden":
        # An unexpected field is named by the client, and its name may be the key itself.
        return f"body: {message}"
    loc = (*prefix, *error.get("loc", ()))
    location = ".".join(str(part) for part in loc if part != "body")
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
