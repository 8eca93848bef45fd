"""One key's write: the job a PUT becomes, the compare-and-swap that honours its precondition, and
its result. Both the service (seeding, imports) and the group commit (keyvault.keys.writes) run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from keyvault.audit.events import AuditEvent
from keyvault.errors import PreconditionFailed
from keyvault.keys.preconditions import Precondition
from keyvault.keys.record_writes import RecordWrites
from keyvault.keys.repository import NewRecord, RecordState
from keyvault.keys.schemas import KeyStatus

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: KeyStatus
    etag: str
    created: bool


@dataclass(frozen=True, slots=True)
class PutJob:
    """A PUT ready to run: the record already sealed, and the audit event that must commit with
    it (its key version is filled in once the write has one)."""

    record: NewRecord
    precondition: Precondition
    event: AuditEvent


def etag_for(state: RecordState) -> str:
    """Version plus creation time: a deleted and re-created key never matches an old tag."""
    created_us = (state.created_at - _EPOCH) // timedelta(microseconds=1)
    return f'"{state.version}.{created_us}"'


async def apply_put(
    records: RecordWrites, record: NewRecord, precondition: Precondition
) -> WriteResult:
    """The write itself, honouring If-Match / If-None-Match; PreconditionFailed writes nothing.

    A conditional write is a compare-and-swap on the state its condition was checked against, so
    a concurrent write in between makes it fail rather than be overwritten."""
    now = datetime.now(UTC)
    if precondition.unconditional:
        return written(record, await records.upsert(record, now))
    if precondition.only_creates:
        state = await records.insert_if_absent(record, now)
        if state is None:
            raise PreconditionFailed("This user already has an API key (If-None-Match: *).")
        return written(record, state)
    current = await records.get_state(record.sub, record.provider)
    refusal = precondition.refusal(None if current is None else etag_for(current))
    if refusal is not None:
        raise PreconditionFailed(refusal)
    if current is None:
        state = await records.insert_if_absent(record, now)
    else:
        state = await records.replace_if_current(record, current, now)
    if state is None:
        raise PreconditionFailed("The key has changed since its precondition was checked.")
    return written(record, state)


def written(record: NewRecord, state: RecordState) -> WriteResult:
    return WriteResult(
        status_of(record.sub, record.provider, state, datetime.now(UTC)),
        etag_for(state),
        created=state.version == 1,
    )


def status_of(sub: str, provider: str, state: RecordState, now: datetime) -> KeyStatus:
    return KeyStatus(
        sub=sub,
        provider=provider,
        has_api_key=True,
        last4=state.last4 or None,
        label=state.label,
        created_at=state.created_at,
        updated_at=state.updated_at,
        expires_at=state.expires_at,
        expired=state.expired_at(now),
        version=state.version,
    )
