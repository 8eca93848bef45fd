"""The operations on a user's API key, as plain async functions over a session and a keyring."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from sqlalchemy.ext.asyncio import AsyncSession

from keyvault.audit.events import AuditEvent
from keyvault.crypto.records import Keyring, RecordIntegrityError, SealedRecord, UnknownKeyIdError
from keyvault.errors import NotFound, PreconditionFailed, RecordUndecryptable
from keyvault.keys import repository
from keyvault.keys.preconditions import Precondition
from keyvault.keys.record_writes import RecordWrites, SessionRecordWrites
from keyvault.keys.repository import RecordState
from keyvault.keys.schemas import ApiKeyRead, KeyStatus
from keyvault.observability import metrics

if TYPE_CHECKING:
    from keyvault.keys.writes import KeyWrites

LAST4_MIN_KEY_LENGTH: Final = 12
UNCONDITIONAL: Final = Precondition()
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

log = logging.getLogger("keyvault")


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: KeyStatus
    etag: str
    created: bool


def etag_for(state: RecordState) -> str:
    """Version plus creation time: a deleted and re-created key never matches an old tag."""
    created_us = (state.created_at - _EPOCH) // timedelta(microseconds=1)
    return f'"{state.version}.{created_us}"'


@dataclass(frozen=True, slots=True)
class PutJob:
    """A PUT ready to run: the key already sealed, and the audit event that must commit with it
    (its key version is filled in once the write has one)."""

    sub: str
    sealed: SealedRecord
    last4: str
    precondition: Precondition
    event: AuditEvent


async def put_api_key(
    session: AsyncSession,
    keyring: Keyring,
    sub: str,
    api_key: str,
    precondition: Precondition = UNCONDITIONAL,
) -> WriteResult:
    """Store the key in `session`'s transaction, without an audit event (seeding, imports)."""
    records = SessionRecordWrites(session)
    return await apply_put(
        records, sub, keyring.seal(sub, api_key), last4_of(api_key), precondition
    )


async def put_api_key_audited(
    writes: KeyWrites,
    keyring: Keyring,
    sub: str,
    api_key: str,
    precondition: Precondition,
    event: AuditEvent,
) -> WriteResult:
    """Store the key and its audit event in one transaction, shared with concurrent PUTs."""
    job = PutJob(sub, keyring.seal(sub, api_key), last4_of(api_key), precondition, event)
    return await writes.put(job)


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
    return WriteResult(_status(sub, state), etag_for(state), created=state.version == 1)


async def get_api_key(
    records: repository.RecordReader, keyring: Keyring, sub: str
) -> tuple[ApiKeyRead, str]:
    record = await records.get_record(sub)
    if record is None:
        raise NotFound("This user has no API key.")
    try:
        api_key = keyring.open(sub, record.sealed)
    except UnknownKeyIdError as error:
        metrics.DECRYPT_FAILURES.labels("unknown_key_id").inc()
        log.error(
            "stored key for sub=%r is sealed under unconfigured key id %s",
            sub,
            error.key_id,
            extra={"event": "decrypt_failure", "reason": "unknown_key_id"},
        )
        raise RecordUndecryptable(
            f"The stored key is sealed under master key id {error.key_id}, which is not configured."
        ) from None
    except RecordIntegrityError:
        metrics.DECRYPT_FAILURES.labels("integrity").inc()
        log.error(
            "stored key for sub=%r failed its integrity check (tampered or moved)",
            sub,
            extra={"event": "decrypt_failure", "reason": "integrity"},
        )
        raise RecordUndecryptable(
            "The stored key failed its integrity check; it was altered or copied from another user."
        ) from None
    state = record.state
    body = ApiKeyRead(
        sub=sub,
        api_key=api_key,
        last4=state.last4 or None,
        created_at=state.created_at,
        updated_at=state.updated_at,
        version=state.version,
    )
    return body, etag_for(state)


async def get_status(session: AsyncSession, sub: str) -> tuple[KeyStatus, str | None]:
    state = await repository.get_state(session, sub)
    if state is None:
        empty = KeyStatus(
            sub=sub, has_api_key=False, last4=None, created_at=None, updated_at=None, version=None
        )
        return empty, None
    return _status(sub, state), etag_for(state)


async def delete_api_key(session: AsyncSession, sub: str) -> int:
    """Delete the key; returns the version it had."""
    version = await repository.delete_record(session, sub)
    if version is None:
        raise NotFound("This user has no API key.")
    return version


def last4_of(api_key: str) -> str:
    """Short keys would give away too much of themselves; they get no hint at all."""
    return api_key[-4:] if len(api_key) >= LAST4_MIN_KEY_LENGTH else ""


def _status(sub: str, state: RecordState) -> KeyStatus:
    return KeyStatus(
        sub=sub,
        has_api_key=True,
        last4=state.last4 or None,
        created_at=state.created_at,
        updated_at=state.updated_at,
        version=state.version,
    )
