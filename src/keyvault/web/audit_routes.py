"""Reading the audit trail: `GET /audit` for auditors, and each owner's access log of their key.

Both list newest first and page with an opaque cursor (the last sequence number seen), so a page
is stable while new events keep arriving at the top.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Depends, Query

from keyvault.audit import repository as audit_repository
from keyvault.audit.events import Action, ChainedEvent, Outcome
from keyvault.audit.repository import EventFilter
from keyvault.auth.tokens import ANY_KEY_ACCESS, Principal
from keyvault.db.models import PROVIDER_NAME_MAX_LENGTH, SUB_MAX_LENGTH
from keyvault.keys.schemas import AccessLogEntry, AccessLogPage, AuditEventRead, AuditPage
from keyvault.web.audit_query import (
    CURSOR_MAX_LENGTH,
    CURSOR_PATTERN,
    FILTER_PATTERN,
    UtcDateTime,
    decode_cursor,
    encode_cursor,
)
from keyvault.web.dependencies import AuditReader, SubjectPath, require
from keyvault.web.key_routes import problems
from keyvault.web.routing import SUBJECT_PATH
from keyvault.web.state import Session

DEFAULT_PAGE: Final = 50
MAX_PAGE: Final = 500

router = APIRouter()


def _sub_filter(description: str) -> object:
    return Query(
        description=description,
        min_length=1,
        max_length=SUB_MAX_LENGTH,
        pattern=FILTER_PATTERN,
    )


TargetFilter = Annotated[str | None, _sub_filter("Target user's `sub`.")]
ActorFilter = Annotated[str | None, _sub_filter("Caller's `sub`.")]
ProviderFilter = Annotated[
    str | None,
    Query(
        description="The provider whose key the events are about.",
        min_length=1,
        max_length=PROVIDER_NAME_MAX_LENGTH,
        pattern=FILTER_PATTERN,
    ),
]
Since = Annotated[
    UtcDateTime | None,
    Query(alias="from", description="From this time on (inclusive); RFC 3339 with an offset."),
]
Until = Annotated[
    UtcDateTime | None,
    Query(alias="to", description="Before this time; RFC 3339 with an offset."),
]
Cursor = Annotated[
    str | None,
    Query(
        description="`next_cursor` of the previous page.",
        max_length=CURSOR_MAX_LENGTH,
        pattern=CURSOR_PATTERN,
    ),
]


# The owner sees their key's log with any api-key scope; others need users:any as well.
LogReader = Annotated[Principal, Depends(require(ANY_KEY_ACCESS))]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Events per page.")]


@router.get(
    "/audit",
    response_model=AuditPage,
    summary="Search the audit trail (scope audit:read), newest first",
    tags=["audit"],
    responses=problems(401, 403, 422, 503),
)
async def search_audit(
    caller: AuditReader,
    session: Session,
    sub: TargetFilter = None,
    actor: ActorFilter = None,
    provider: ProviderFilter = None,
    action: Action | None = None,
    outcome: Outcome | None = None,
    since: Since = None,
    until: Until = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE,
) -> AuditPage:
    where = EventFilter(
        target=sub,
        actor=actor,
        provider=provider,
        action=action,
        outcome=outcome,
        since=since,
        until=until,
    )
    events, next_cursor = await _page(session, where, cursor, limit)
    return AuditPage(
        events=[AuditEventRead(seq=item.seq, **_fields(item)) for item in events],
        next_cursor=next_cursor,
    )


@router.get(
    SUBJECT_PATH + "/api-key/access-log",
    response_model=AccessLogPage,
    summary="Who used this user's API keys (every provider's), and when (newest first)",
    tags=["audit"],
    responses=problems(401, 403, 422, 503),
)
async def read_access_log(
    sub: SubjectPath,
    caller: LogReader,
    session: Session,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE,
) -> AccessLogPage:
    events, next_cursor = await _page(session, EventFilter(target=sub), cursor, limit)
    return AccessLogPage(
        events=[
            AccessLogEntry(
                occurred_at=item.event.occurred_at,
                actor=item.event.actor,
                client_id=item.event.client_id,
                provider=item.event.provider,
                action=item.event.action,
                path=item.event.path,
                outcome=item.event.outcome,
            )
            for item in events
        ],
        next_cursor=next_cursor,
    )


async def _page(
    session: Session, where: EventFilter, cursor: str | None, limit: int
) -> tuple[list[ChainedEvent], str | None]:
    before = decode_cursor(cursor) if cursor is not None else None
    events = await audit_repository.list_events(session, where, before, limit + 1)
    if len(events) <= limit:
        return events, None
    page = events[:limit]
    return page, encode_cursor(page[-1].seq)


def _fields(item: ChainedEvent) -> dict[str, object]:
    event = item.event
    return {
        "occurred_at": event.occurred_at,
        "actor": event.actor,
        "client_id": event.client_id,
        "action": event.action,
        "target": event.target,
        "provider": event.provider,
        "outcome": event.outcome,
        "key_version": event.key_version,
        "validation": event.validation,
        "path": event.path,
        "upstream_status": event.upstream_status,
        "duration_ms": event.duration_ms,
        "request_bytes": event.request_bytes,
        "response_bytes": event.response_bytes,
        "request_id": event.request_id,
        "client_address": event.client_address,
        "user_agent": event.user_agent,
    }
