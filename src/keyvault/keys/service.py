"""The operations on a user's API keys, one per provider, as plain async functions over a session
(or the read path's reader) and a keyring. A provider here is a configured provider's name."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession

from keyvault.audit.events import AuditEvent
from keyvault.crypto.records import Keyring, RecordIntegrityError, UnknownKeyIdError
from keyvault.errors import KeyExpired, NotFound, RecordUndecryptable
from keyvault.keys import repository
from keyvault.keys.preconditions import Precondition
from keyvault.keys.put import PutJob, WriteResult, apply_put, etag_for, status_of
from keyvault.keys.record_writes import SessionRecordWrites
from keyvault.keys.repository import NewRecord, RecordState
from keyvault.keys.schemas import ApiKeyRead, ApiKeyWrite, KeyList, KeyStatus
from keyvault.keys.writes import KeyWrites
from keyvault.observability import metrics

LAST4_MIN_KEY_LENGTH: Final = 12
UNCONDITIONAL: Final = Precondition()
NO_KEY: Final = "This user has no API key."

log = logging.getLogger("keyvault")


def new_record(
    keyring: Keyring, sub: str, provider: str, api_key: str, body: ApiKeyWrite | None = None
) -> NewRecord:
    """The record a write stores: the key sealed to its owner and provider, with its label and
    expiry from the request's body."""
    return NewRecord(
        sub,
        provider,
        keyring.seal(sub, provider, api_key),
        last4_of(api_key),
        label=body.label if body is not None else None,
        expires_at=body.expires_at if body is not None else None,
    )


async def put_api_key(
    session: AsyncSession,
    keyring: Keyring,
    sub: str,
    provider: str,
    api_key: str,
    precondition: Precondition = UNCONDITIONAL,
) -> WriteResult:
    """Store the key in `session`'s transaction, without an audit event (seeding, imports)."""
    record = new_record(keyring, sub, provider, api_key)
    return await apply_put(SessionRecordWrites(session), record, precondition)


async def put_api_key_audited(
    writes: KeyWrites,
    keyring: Keyring,
    sub: str,
    provider: str,
    body: ApiKeyWrite,
    precondition: Precondition,
    event: AuditEvent,
) -> WriteResult:
    """Store the key and its audit event in one transaction, shared with concurrent PUTs."""
    record = new_record(keyring, sub, provider, body.api_key.get_secret_value(), body)
    return await writes.put(PutJob(record, precondition, event))


async def get_api_key(
    records: repository.RecordReader,
    keyring: Keyring,
    sub: str,
    provider: str,
    *,
    reload: Callable[[str], Awaitable[Keyring]] | None = None,
) -> tuple[ApiKeyRead, str]:
    """The key in clear; NotFound when there is none, KeyExpired once its expiry has passed.

    A record under a key id the keyring lacks may have been sealed by another instance under a
    root key it has just rotated to: `reload` gives the keyring re-read for that key id."""
    api_key, state = await _open(records, keyring, sub, provider, reload)
    body = ApiKeyRead(
        sub=sub,
        provider=provider,
        api_key=api_key,
        last4=state.last4 or None,
        label=state.label,
        created_at=state.created_at,
        updated_at=state.updated_at,
        expires_at=state.expires_at,
        version=state.version,
    )
    return body, etag_for(state)


async def key_for_use(
    records: repository.RecordReader,
    keyring: Keyring,
    sub: str,
    provider: str,
    *,
    reload: Callable[[str], Awaitable[Keyring]] | None = None,
) -> tuple[SecretStr, int]:
    """The key and its version, for the provider proxy to send on; refused as get_api_key is."""
    api_key, state = await _open(records, keyring, sub, provider, reload)
    return SecretStr(api_key), state.version


async def _open(
    records: repository.RecordReader,
    keyring: Keyring,
    sub: str,
    provider: str,
    reload: Callable[[str], Awaitable[Keyring]] | None,
) -> tuple[str, RecordState]:
    record = await records.get_record(sub, provider)
    if record is None:
        raise NotFound(NO_KEY)
    state = record.state
    if state.expires_at is not None and state.expired_at(datetime.now(UTC)):
        raise KeyExpired()
    try:
        if reload is not None and keyring.root(record.sealed.key_id) is None:
            keyring = await reload(record.sealed.key_id)
        api_key = keyring.open(sub, provider, record.sealed)
    except UnknownKeyIdError as error:
        metrics.DECRYPT_FAILURES.labels("unknown_key_id").inc()
        log.error(
            "stored %s key for sub=%r is sealed under unconfigured key id %s",
            provider,
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
            "stored %s key for sub=%r failed its integrity check (tampered or moved)",
            provider,
            sub,
            extra={"event": "decrypt_failure", "reason": "integrity"},
        )
        raise RecordUndecryptable(
            "The stored key failed its integrity check; it was altered or copied from another user or provider."
        ) from None
    return api_key, state


async def get_status(
    session: AsyncSession, sub: str, provider: str
) -> tuple[KeyStatus, str | None]:
    state = await repository.get_state(session, sub, provider)
    if state is None:
        empty = KeyStatus(
            sub=sub,
            provider=provider,
            has_api_key=False,
            last4=None,
            label=None,
            created_at=None,
            updated_at=None,
            expires_at=None,
            expired=False,
            version=None,
        )
        return empty, None
    return status_of(sub, provider, state, datetime.now(UTC)), etag_for(state)


async def list_keys(session: AsyncSession, sub: str) -> KeyList:
    now = datetime.now(UTC)
    states = await repository.list_states(session, sub)
    return KeyList(
        sub=sub, keys=[status_of(sub, provider, state, now) for provider, state in states]
    )


async def delete_api_key(session: AsyncSession, sub: str, provider: str) -> int:
    """Delete the key; returns the version it had."""
    version = await repository.delete_record(session, sub, provider)
    if version is None:
        raise NotFound(NO_KEY)
    return version


def last4_of(api_key: str) -> str:
    """Short keys would give away too much of themselves; they get no hint at all."""
    return api_key[-4:] if len(api_key) >= LAST4_MIN_KEY_LENGTH else ""
