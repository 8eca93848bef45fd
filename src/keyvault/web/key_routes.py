"""HTTP routes. Each one: who is calling (auth dependency) → the service → a response."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response, status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from keyvault.audit.events import Action
from keyvault.audit.trail import AuditedRoute, RequestAudit, audited, get_request_audit
from keyvault.crypto.records import Keyring
from keyvault.db.engine import session_scope
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
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from keyvault.keys import repository, service
from keyvault.keys.preconditions import precondition_of
from keyvault.keys.put import WriteResult
from keyvault.keys.schemas import ApiKeyRead, ApiKeyWrite, KeyStatus, ProblemDetails
from keyvault.keys.writes import KeyWrites
from keyvault.web.dependencies import KeyDeleter, KeyReader, KeyWriter, StatusReader, SubjectPath

NO_STORE = {"Cache-Control": "no-store"}


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with session_scope(request.app.state.sessions) as session:
        yield session


async def get_key_writes(request: Request) -> KeyWrites:
    writes: KeyWrites = request.app.state.key_writes
    return writes


async def get_record_reader(request: Request) -> repository.RecordReader:
    reader: repository.RecordReader = request.app.state.record_reader
    return reader


# async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop on every request.
async def get_keyring(request: Request) -> Keyring:
    keyring: Keyring = request.app.state.keyring
    return keyring


# scope="function": commit before the response is sent, so a failed commit is never reported as 2xx.
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]
# The hottest route's one SELECT holds a connection only while it runs (see RecordReader).
Records = Annotated[repository.RecordReader, Depends(get_record_reader)]
CurrentKeyring = Annotated[Keyring, Depends(get_keyring)]
# PUTs share transactions with concurrent PUTs (see key_writes), so they hold no session.
Writes = Annotated[KeyWrites, Depends(get_key_writes)]
# Declared before `session` in a route: see get_request_audit for why the order matters.
Audit = Annotated[RequestAudit, Depends(get_request_audit, scope="function")]


async def get_mutation_audit(request: Request) -> RequestAudit:
    audit: RequestAudit = request.state.audit
    return audit


# A PUT's event commits with its change (key_writes), so there is no event to wait for afterwards:
# a plain dependency, without the generator's exit stack.
MutationAudit = Annotated[RequestAudit, Depends(get_mutation_audit)]


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
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

# Endpoints marked @audited leave one audit event per request, whatever its outcome.
router = APIRouter(route_class=AuditedRoute)


@router.put(
    "/users/{sub:subject}/api-key",
    response_model=KeyStatus,
    status_code=status.HTTP_200_OK,
    summary="Store or replace a user's API key",
    responses={
        201: {"model": KeyStatus, "description": "Created."},
        **_problems(401, 403, 412, 413, 422, 429, 503),
    },
)
@audited(Action.put)
async def put_api_key(
    sub: SubjectPath,
    body: ApiKeyWrite,
    caller: KeyWriter,
    audit: MutationAudit,
    writes: Writes,
    keyring: CurrentKeyring,
    if_match: Annotated[list[str] | None, Header(description=_IF_MATCH)] = None,
    if_none_match: Annotated[list[str] | None, Header(description=_IF_NONE_MATCH)] = None,
) -> Response:
    # Most requests to this route are answered by keyvault.write_path, a shorter path through the
    # same steps; this endpoint answers the rest, and documents the route.
    api_key = body.api_key.get_secret_value()
    event = audit.success_event()
    result = await service.put_api_key_audited(
        writes, keyring, sub, api_key, precondition_of(if_match, if_none_match), event
    )
    audit.recorded = True  # committed with the change
    return written_response(result)


def written_response(result: WriteResult) -> Response:
    # Serialised once here, as in key_response: the status is already a validated KeyStatus.
    return Response(
        result.status.model_dump_json(),
        status_code=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
        media_type="application/json",
        headers={"ETag": result.etag},
    )


@router.get(
    "/users/{sub:subject}/api-key/status",
    response_model=KeyStatus,
    summary="Whether a user has an API key (never reveals it)",
    responses=_problems(401, 403, 422, 429, 503),
)
@audited(Action.status)
async def read_api_key_status(
    sub: SubjectPath, caller: StatusReader, audit: Audit, session: Session, response: Response
) -> KeyStatus:
    key_status, etag = await service.get_status(session, sub)
    audit.succeeded(key_version=key_status.version)
    if etag is not None:
        response.headers["ETag"] = etag
    return key_status


@router.get(
    "/users/{sub:subject}/api-key",
    response_model=ApiKeyRead,
    summary="Read a user's decrypted API key",
    responses=_problems(401, 403, 404, 422, 429, 500, 503),
)
@audited(Action.get)
async def read_api_key(
    sub: SubjectPath,
    caller: KeyReader,
    audit: Audit,
    records: Records,
    keyring: CurrentKeyring,
) -> Response:
    # Most requests to this route are answered by keyvault.read_path, a shorter path through the
    # same steps; this endpoint answers the rest, and documents the route.
    body, etag = await service.get_api_key(records, keyring, sub)
    audit.succeeded(key_version=body.version)  # committed before the response leaves
    return key_response(body, etag)


def key_response(body: ApiKeyRead, etag: str) -> Response:
    # The body is already a validated ApiKeyRead: serialise it once here instead of letting the
    # response model validate and serialise it again (this is the hottest route).
    return Response(
        body.model_dump_json(), media_type="application/json", headers={**NO_STORE, "ETag": etag}
    )


@router.delete(
    "/users/{sub:subject}/api-key",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a user's API key",
    responses=_problems(401, 403, 404, 422, 429, 503),
)
@audited(Action.delete)
async def delete_api_key(
    sub: SubjectPath, caller: KeyDeleter, audit: Audit, session: Session
) -> None:
    version = await service.delete_api_key(session, sub)
    await audit.succeeded_in(session, key_version=version)


@router.get("/healthz", summary="The process is up", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable and the master key verified",
    tags=["health"],
    responses=_problems(503),
)
async def readyz(request: Request) -> dict[str, str]:
    if getattr(request.app.state, "keyring", None) is None:
        raise ServiceUnavailable("The master key has not been verified.")
    async with session_scope(request.app.state.sessions) as session:
        await session.execute(text("SELECT 1"))
    return {"status": "ready"}
