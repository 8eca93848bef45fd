"""One key's write: the job a PUT becomes, the compare-and-swap that honours its precondition, and
its result. Both the service (seeding, imports) and the group commit (keyvault.keys.writes) run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from keyvault.audit.events import AuditEvent
from keyvault.crypto.records import SealedRecord
from keyvault.errors import PreconditionFailed
from keyvault.keys.preconditions import Precondition
from keyvault.keys.record_writes import RecordWrites
from keyvault.keys.repository import RecordState
from keyvault.keys.schemas import KeyStatus

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: KeyStatus
    etag: str
    created: bool


@dataclass(frozen=True, slots=True)
class PutJob:
    """A PUT ready to run: the key already sealed, and the audit event that must commit with it
    (its key version is filled in once the write has one)."""

    sub: str
    sealed: SealedRecord
    last4: str
    precondition: Precondition
    event: AuditEvent


def etag_for(state: RecordState) -> str:
    """Version plus creation time: a deleted and re-created key never matches an old tag."""
    created_us = (state.created_at - _EPOCH) // timedelta(microseconds=1)
    return f'"{state.version}.{created_us}"'


async def apply_put(
    records: RecordWrites,
    sub: str,
    sealed: SealedRecord,
    last4: str,
    precondition: Precondition,
) -> WriteResult:
    """The write itself, honouring If-Match / If-None-Match; PreconditionFailed writes nothing.

    A conditional write is a compare-and-swap on the state its condition was checked against, so
    a concurrent write in between makes it fail rather than be overwritten."""
    now = datetime.now(UTC)
    if precondition.unconditional:
        return written(sub, await records.upsert(sub, sealed, last4, now))
    if precondition.only_creates:
        state = await records.insert_if_absent(sub, sealed, last4, now)
        if state is None:
            raise PreconditionFailed("This user already has an API key (If-None-Match: *).")
        return written(sub, state)
    current = await records.get_state(sub)
    refusal = precondition.refusal(None if current is None else etag_for(current))
    if refusal is not None:
        raise PreconditionFailed(refusal)
    if current is None:
        state = await records.insert_if_absent(sub, sealed, last4, now)
    else:
        state = await records.replace_if_current(sub, current, sealed, last4, now)
    if state is None:
        raise PreconditionFailed("The key has changed since its precondition was checked.")
    return written(sub, state)


def written(sub: str, state: RecordState) -> WriteResult:
    return WriteResult(status_of(sub, state), etag_for(state), created=state.version == 1)


def status_of(sub: str, state: RecordState) -> KeyStatus:
    return KeyStatus(
        sub=sub,
        has_api_key=True,
        last4=state.last4 or None,
        created_at=state.created_at,
        updated_at=state.updated_at,
        version=state.version,
    )
