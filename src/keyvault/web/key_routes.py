"""The key operations as documented: what /openapi.json and the docs page say about them.

These declarations are never mounted, so FastAPI never serves them: web.key_endpoints serves each
one (its `SERVED` names the endpoint of every route declared here), and the app builds its OpenAPI
document from these routes alongside the mounted ones (web.app.KeyvaultApp.openapi). Their
parameters are the contract the endpoints check: the sub's rules (auth.tokens.SubjectPath), the
body (ApiKeyWrite), the conditional headers, the bearer token and its scopes, and each refusal.
tests/web/test_served_operations.py holds the two together.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, status

from keyvault.errors import (
    PROBLEM_JSON,
    PROBLEM_TYPE_BASE,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    Problem,
    RecordUndecryptable,
    TooManyRequests,
    Unauthorized,
)
from keyvault.keys.schemas import ApiKeyRead, ApiKeyWrite, KeyStatus, ProblemDetails
from keyvault.web.dependencies import KeyDeleter, KeyReader, KeyWriter, StatusReader, SubjectPath
from keyvault.web.routing import SUBJECT_PATH


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        401: "No bearer token, or one that is invalid, expired, or for another audience.",
        403: "The token lacks the scope for this action or this user.",
        404: "This user has no API key.",
        412: "The If-Match / If-None-Match precondition does not hold.",
        413: "The request body is larger than 16 KiB.",
        422: "The path, body or a precondition header is invalid; the detail names the field,"
        " never its value.",
        429: "Too many requests from this address or this caller; `Retry-After` says when to retry.",
        500: "The stored key cannot be decrypted (tampered, moved, or under an unknown master key).",
        503: "The database is unreachable, the audit trail cannot record, or the service is not ready.",
    }
    # Declared under application/problem+json only (a `model` would also list application/json).
    return {
        code: {
            "description": described[code],
            "content": {
                PROBLEM_JSON: {
                    "schema": ProblemDetails.model_json_schema(),
                    "example": _PROBLEM_EXAMPLES[code],
                }
            },
        }
        for code in codes
    }


def _example(slug: str, title: str, status: int, detail: str) -> dict[str, Any]:
    return {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status, "detail": detail}


# What each error looks like on the wire, for the docs page; the details are real ones.
_EXAMPLE_DETAILS: list[tuple[type[Problem], str]] = [
    (Unauthorized, "The bearer token has expired."),
    (Forbidden, "Acting on another user's key needs the users:any scope."),
    (NotFound, "This user has no API key."),
    (PreconditionFailed, "The key has changed since the given ETag was issued."),
    (PayloadTooLarge, "The request body is larger than 16384 bytes."),
    (TooManyRequests, "This caller has made too many requests; retry later."),
    (InvalidRequest, "api_key: Value error, must not contain whitespace"),
    (
        RecordUndecryptable,
        "The stored key failed its integrity check; it was altered or copied from another user.",
    ),
]
_PROBLEM_EXAMPLES: dict[int, dict[str, Any]] = {
    problem.status: _example(problem.slug, problem.title, problem.status, detail)
    for problem, detail in _EXAMPLE_DETAILS
}
# A 503 is most often the outage answer from middleware.LastResortErrors.
_PROBLEM_EXAMPLES[503] = _example(
    "database-unavailable",
    "Database unavailable",
    503,
    "The database cannot be reached right now; retry shortly.",
)


_IF_MATCH = (
    "`*`, or entity tags: write only if the key exists and its ETag is one of them (strong"
    " comparison). `*` stands alone; anything else malformed is 422."
)
_IF_NONE_MATCH = (
    "`*` (write only if the user has no key), or entity tags: write only if the key's ETag is none"
    " of them (weak comparison)."
)

router = APIRouter()


@router.put(
    SUBJECT_PATH + "/api-key",
    response_model=KeyStatus,
    status_code=status.HTTP_200_OK,
    summary="Store or replace a user's API key",
    responses={
        201: {"model": KeyStatus, "description": "Created."},
        **problems(401, 403, 412, 413, 422, 429, 503),
    },
)
async def put_api_key(
    sub: SubjectPath,
    body: ApiKeyWrite,
    caller: KeyWriter,
    if_match: Annotated[list[str] | None, Header(description=_IF_MATCH)] = None,
    if_none_match: Annotated[list[str] | None, Header(description=_IF_NONE_MATCH)] = None,
) -> KeyStatus:
    raise NotImplementedError  # served by web.key_endpoints.put_api_key


@router.get(
    SUBJECT_PATH + "/api-key/status",
    response_model=KeyStatus,
    summary="Whether a user has an API key (never reveals it)",
    responses=problems(401, 403, 422, 429, 503),
)
async def read_api_key_status(sub: SubjectPath, caller: StatusReader) -> KeyStatus:
    raise NotImplementedError  # served by web.key_endpoints.read_api_key_status


@router.get(
    SUBJECT_PATH + "/api-key",
    response_model=ApiKeyRead,
    summary="Read a user's decrypted API key",
    responses=problems(401, 403, 404, 422, 429, 500, 503),
)
async def read_api_key(sub: SubjectPath, caller: KeyReader) -> ApiKeyRead:
    raise NotImplementedError  # served by web.key_endpoints.read_api_key


@router.delete(
    SUBJECT_PATH + "/api-key",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user's API key",
    responses=problems(401, 403, 404, 422, 429, 503),
)
async def delete_api_key(sub: SubjectPath, caller: KeyDeleter) -> None:
    raise NotImplementedError  # served by web.key_endpoints.delete_api_key
