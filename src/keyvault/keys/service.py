"""The operations on a user's API key, as plain async functions over a session and a keyring."""

from __future__ import annotations

import logging
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

from keyvault.audit.events import AuditEvent
from keyvault.crypto.records import Keyring, RecordIntegrityError, UnknownKeyIdError
from keyvault.errors import NotFound, RecordUndecryptable
from keyvault.keys import repository
from keyvault.keys.preconditions import Precondition
from keyvault.keys.put import PutJob, WriteResult, apply_put, etag_for, status_of
from keyvault.keys.record_writes import SessionRecordWrites
from keyvault.keys.schemas import ApiKeyRead, KeyStatus
from keyvault.keys.writes import KeyWrites
from keyvault.observability import metrics

LAST4_MIN_KEY_LENGTH: Final = 12
UNCONDITIONAL: Final = Precondition()

log = logging.getLogger("keyvault")


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
    return status_of(sub, state), etag_for(state)


async def delete_api_key(session: AsyncSession, sub: str) -> int:
    """Delete the key; returns the version it had."""
    version = await repository.delete_record(session, sub)
    if version is None:
        raise NotFound("This user has no API key.")
    return version


def last4_of(api_key: str) -> str:
    """Short keys would give away too much of themselves; they get no hint at all."""
    return api_key[-4:] if len(api_key) >= LAST4_MIN_KEY_LENGTH else ""
