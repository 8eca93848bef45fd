"""The key operations as documented: what /openapi.json and the docs page say about them.

These declarations are never mounted, so FastAPI never serves them: web.key_endpoints serves each
one (its `SERVED` names the endpoint of every route declared here), and the app builds its OpenAPI
document from these routes alongside the mounted ones (web.app.KeyvaultApp.openapi). Their
parameters are the contract the endpoints check: the sub's rules (auth.tokens.SubjectPath), the
provider (web.app names the configured ones), the body (ApiKeyWrite), `validate`, the conditional
headers, the bearer token and its scopes, and each refusal.
tests/web/test_served_operations.py holds the two together.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, status

from keyvault.errors import (
    PROBLEM_JSON,
    PROBLEM_TYPE_BASE,
    Forbidden,
    InvalidRequest,
    KeyExpired,
    KeyRejectedByProvider,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    Problem,
    ProviderTimeout,
    ProviderUnavailable,
    RecordUndecryptable,
    TooManyRequests,
    Unauthorized,
    UnknownProvider,
)
from keyvault.keys.schemas import ApiKeyRead, ApiKeyWrite, KeyList, KeyStatus, ProblemDetails
from keyvault.web.dependencies import KeyDeleter, KeyReader, KeyWriter, StatusReader, SubjectPath
from keyvault.web.routing import SUBJECT_PATH

_DESCRIBED = {
    401: "No bearer token, or one that is invalid, expired, or for another audience.",
    403: "The token lacks the scope for this action or this user.",
    404: "This user has no API key.",
    412: "The If-Match / If-None-Match precondition does not hold.",
    413: "The request body is larger than 16 KiB.",
    422: "The path, body or a precondition header is invalid; the detail names the field,"
    " never its value.",
    429: "Too many requests from this address or this caller; `Retry-After` says when to retry.",
    500: "The stored key cannot be decrypted (tampered, moved, or under an unknown master key).",
    502: "`validate=true`: the provider could not be reached, or its answer (not 2xx, 401 or 403)"
    " did not confirm the key. Nothing was stored.",
    503: "The database is unreachable, the audit trail cannot record, or the service is not ready.",
    504: "`validate=true`: the provider did not answer within KEYVAULT_PROVIDER_TIMEOUT. Nothing"
    " was stored.",
}


def problems(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """The refusals a route documents; `described` overrides a status's description, as
    `_404="…"`. A status with several problem types shows an example of each."""
    overrides = {int(name.removeprefix("_")): text for name, text in described.items()}
    # Declared under application/problem+json only (a `model` would also list application/json).
    return {
        code: {
            "description": overrides.get(code, _DESCRIBED[code]),
            "content": {
                PROBLEM_JSON: {"schema": ProblemDetails.model_json_schema(), **_shown(code)}
            },
        }
        for code in codes
    }


def _shown(code: int) -> dict[str, Any]:
    examples = _PROBLEM_EXAMPLES[code]
    if len(examples) == 1:
        return {"example": examples[0]}
    return {
        "examples": {example["type"].rsplit("/", 1)[1]: {"value": example} for example in examples}
    }


def _example(slug: str, title: str, status: int, detail: str) -> dict[str, Any]:
    return {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status, "detail": detail}


# What each error looks like on the wire, for the docs page; the details are real ones.
_EXAMPLE_DETAILS: list[tuple[type[Problem], str]] = [
    (Unauthorized, "The bearer token has expired."),
    (Forbidden, "Acting on another user's key needs the users:any scope."),
    (NotFound, "This user has no API key."),
    (KeyExpired, KeyExpired().detail),
    (UnknownProvider, UnknownProvider().detail),
    (PreconditionFailed, "The key has changed since the given ETag was issued."),
    (PayloadTooLarge, "The request body is larger than 16384 bytes."),
    (TooManyRequests, "This caller has made too many requests; retry later."),
    (InvalidRequest, "api_key: Value error, must not contain whitespace"),
    (
        KeyRejectedByProvider,
        "The provider rejected this key (401 or 403); nothing was stored.",
    ),
    (
        RecordUndecryptable,
        "The stored key failed its integrity check; it was altered or copied from another user"
        " or provider.",
    ),
    (
        ProviderUnavailable,
        "The provider could not be reached, so the key could not be checked; nothing was stored.",
    ),
    (
        ProviderTimeout,
        "The provider did not answer in time, so the key could not be checked; nothing was stored.",
    ),
]
_PROBLEM_EXAMPLES: dict[int, list[dict[str, Any]]] = {}
for _problem, _detail in _EXAMPLE_DETAILS:
    _PROBLEM_EXAMPLES.setdefault(_problem.status, []).append(
        _example(_problem.slug, _problem.title, _problem.status, _detail)
    )
# A 503 is most often the outage answer from middleware.LastResortErrors.
_PROBLEM_EXAMPLES[503] = [
    _example(
        "database-unavailable",
        "Database unavailable",
        503,
        "The database cannot be reached right now; retry shortly.",
    )
]


_IF_MATCH = (
    "`*`, or entity tags: write only if the key exists and its ETag is one of them (strong"
    " comparison). `*` stands alone; anything else malformed is 422."
)
_IF_NONE_MATCH = (
    "`*` (write only if the user has no key), or entity tags: write only if the key's ETag is none"
    " of them (weak comparison)."
)
_VALIDATE = (
    "Check the key with the provider first (one authenticated GET of its validation path, e.g."
    " openai `GET {base}/models`): a 401 or 403 from the provider is 422"
    " `key-rejected-by-provider`; no answer is 502 or 504. Nothing is stored unless it passes."
)
_NO_KEY_HERE = "This user has no key for this provider (`not-found`), the key's `expires_at` has"
_NOT_THERE = (
    f"{_NO_KEY_HERE} passed (`key-expired`), or no provider of that name is configured"
    " (`unknown-provider`)."
)
_NO_PROVIDER = "No provider of that name is configured (`unknown-provider`)."
_NO_PROVIDER_OR_KEY = (
    "This user has no key for this provider, or no provider of that name is configured"
    " (`unknown-provider`)."
)

ProviderPath = Annotated[
    str,
    Path(
        description="A configured provider: `openai`, `anthropic`, or one named in"
        " KEYVAULT_PROVIDERS_FILE. Any other name is 404 `unknown-provider`."
    ),
]
Validate = Annotated[bool, Query(description=_VALIDATE)]
IfMatch = Annotated[list[str] | None, Header(description=_IF_MATCH)]
IfNoneMatch = Annotated[list[str] | None, Header(description=_IF_NONE_MATCH)]

router = APIRouter()

# The openai key, as `/users/{sub}/api-key` has always served it; then any provider's key, at
# `/users/{sub}/api-keys/{provider}`. Both are served by the same endpoints (web.key_endpoints).


@router.put(
    SUBJECT_PATH + "/api-key",
    response_model=KeyStatus,
    status_code=status.HTTP_200_OK,
    summary="Store or replace a user's openai API key",
    responses={
        201: {"model": KeyStatus, "description": "Created."},
        **problems(401, 403, 412, 413, 422, 429, 502, 503, 504),
    },
)
async def put_api_key(
    sub: SubjectPath,
    body: ApiKeyWrite,
    caller: KeyWriter,
    validate: Validate = False,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> KeyStatus:
    raise NotImplementedError  # served by web.key_endpoints.put_api_key


@router.get(
    SUBJECT_PATH + "/api-key/status",
    response_model=KeyStatus,
    summary="Whether a user has an openai API key (never reveals it)",
    responses=problems(401, 403, 422, 429, 503),
)
async def read_api_key_status(sub: SubjectPath, caller: StatusReader) -> KeyStatus:
    raise NotImplementedError  # served by web.key_endpoints.read_api_key_status


@router.get(
    SUBJECT_PATH + "/api-key",
    response_model=ApiKeyRead,
    summary="Read a user's decrypted openai API key",
    responses=problems(
        401, 403, 404, 422, 429, 500, 503, _404=f"{_NO_KEY_HERE} passed (`key-expired`)."
    ),
)
async def read_api_key(sub: SubjectPath, caller: KeyReader) -> ApiKeyRead:
    raise NotImplementedError  # served by web.key_endpoints.read_api_key


@router.delete(
    SUBJECT_PATH + "/api-key",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user's openai API key",
    responses=problems(401, 403, 404, 422, 429, 503),
)
async def delete_api_key(sub: SubjectPath, caller: KeyDeleter) -> None:
    raise NotImplementedError  # served by web.key_endpoints.delete_api_key


@router.get(
    SUBJECT_PATH + "/api-keys",
    response_model=KeyList,
    summary="A user's keys, one status per provider (never the keys)",
    responses=problems(401, 403, 422, 429, 503),
)
async def list_api_keys(sub: SubjectPath, caller: StatusReader) -> KeyList:
    raise NotImplementedError  # served by web.key_endpoints.list_api_keys


@router.put(
    SUBJECT_PATH + "/api-keys/{provider}",
    response_model=KeyStatus,
    status_code=status.HTTP_200_OK,
    summary="Store or replace a user's API key for a provider",
    responses={
        201: {"model": KeyStatus, "description": "Created."},
        **problems(401, 403, 404, 412, 413, 422, 429, 502, 503, 504, _404=_NO_PROVIDER),
    },
)
async def put_provider_key(
    sub: SubjectPath,
    provider: ProviderPath,
    body: ApiKeyWrite,
    caller: KeyWriter,
    validate: Validate = False,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> KeyStatus:
    raise NotImplementedError  # served by web.key_endpoints.put_api_key


@router.get(
    SUBJECT_PATH + "/api-keys/{provider}/status",
    response_model=KeyStatus,
    summary="Whether a user has an API key for a provider (never reveals it)",
    responses=problems(401, 403, 404, 422, 429, 503, _404=_NO_PROVIDER),
)
async def read_provider_key_status(
    sub: SubjectPath, provider: ProviderPath, caller: StatusReader
) -> KeyStatus:
    raise NotImplementedError  # served by web.key_endpoints.read_api_key_status


@router.get(
    SUBJECT_PATH + "/api-keys/{provider}",
    response_model=ApiKeyRead,
    summary="Read a user's decrypted API key for a provider",
    responses=problems(401, 403, 404, 422, 429, 500, 503, _404=_NOT_THERE),
)
async def read_provider_key(
    sub: SubjectPath, provider: ProviderPath, caller: KeyReader
) -> ApiKeyRead:
    raise NotImplementedError  # served by web.key_endpoints.read_api_key


@router.delete(
    SUBJECT_PATH + "/api-keys/{provider}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user's API key for a provider",
    responses=problems(401, 403, 404, 422, 429, 503, _404=_NO_PROVIDER_OR_KEY),
)
async def delete_provider_key(sub: SubjectPath, provider: ProviderPath, caller: KeyDeleter) -> None:
    raise NotImplementedError  # served by web.key_endpoints.delete_api_key
