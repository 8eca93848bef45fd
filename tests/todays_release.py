"""What the release before provider keys wrote, written out here independently of keyvault's code:
format v2 records (one key per user, no provider in the associated data) in the schema of
revision 0004, and audit events chained without a provider or a validation field.

Spelled from the primitives, as docs/crypto.md and docs/audit-trail.md describe them, so that a
change to keyvault.crypto or keyvault.audit that stopped those rows from opening or verifying
cannot hide behind the same change here.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from alembic import command
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    update,
)

from keyvault.crypto.records import MIN_KDF_ITERATIONS, RootKey
from keyvault.db.engine import create_engine, create_sessionmaker
from keyvault.db.migrations import alembic_config
from keyvault.db.models import UTCDateTime
from keyvault.master_keys.unlock import unlock

REVISION = "0004"
GENESIS = bytes(32)

# The tables of revision 0004, as far as they are filled here.
_old = MetaData()
OLD_API_KEYS = Table(
    "api_keys",
    _old,
    Column("sub", String),
    Column("format_version", SmallInteger),
    Column("key_id", String),
    Column("salt", LargeBinary),
    Column("nonce", LargeBinary),
    Column("ciphertext", LargeBinary),
    Column("last4", String),
    Column("version", Integer),
    Column("created_at", UTCDateTime),
    Column("updated_at", UTCDateTime),
)
OLD_AUDIT_EVENTS = Table(
    "audit_events",
    _old,
    Column("seq", BigInteger),
    Column("occurred_at", UTCDateTime),
    Column("actor", String),
    Column("client_id", String),
    Column("action", String),
    Column("target", String),
    Column("outcome", String),
    Column("key_version", Integer),
    Column("request_id", String),
    Column("client_address", String),
    Column("user_agent", String),
    Column("key_id", String),
    Column("link", LargeBinary),
)
OLD_AUDIT_HEAD = Table(
    "audit_head",
    _old,
    Column("id", Integer),
    Column("seq", BigInteger),
    Column("link", LargeBinary),
    Column("key_id", String),
    Column("mac", LargeBinary),
)


def _hkdf(material: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(material)


def seal_v2(root: RootKey, owner: str, api_key: str) -> tuple[bytes, bytes, bytes]:
    """(salt, nonce, ciphertext) of a format v2 record: the owner bound, no provider."""
    salt, nonce = os.urandom(16), os.urandom(12)
    key_id = root.key_id.encode()
    aad = (
        b"keyvault"
        + struct.pack(">BH", 2, len(key_id))
        + key_id
        + struct.pack(">H", len(owner.encode()))
        + owner.encode()
    )
    record_key = _hkdf(root.material, salt, b"keyvault/record/v2")
    return salt, nonce, AESGCM(record_key).encrypt(nonce, api_key.encode(), aad)


@dataclass(frozen=True)
class OldEvent:
    action: str
    outcome: str
    target: str
    key_version: int | None


def _link(key: bytes, previous: bytes, seq: int, key_id: str, at: datetime, e: OldEvent) -> bytes:
    fields = {
        "occurred_at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "action": e.action,
        "outcome": e.outcome,
        "target": e.target,
        "actor": e.target,
        "client_id": None,
        "key_version": e.key_version,
        "request_id": f"old-{seq}",
        "client_address": "10.0.0.1",
        "user_agent": "old-client",
        "seq": seq,
        "key_id": key_id,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.digest(key, previous + canonical.encode(), "sha256")


async def fill_as_todays_release(
    database_url: str, master_key: str, keys: dict[str, str], events: Sequence[OldEvent]
) -> RootKey:
    """A database at revision 0004 holding `keys` (sub → API key) and `events`, chained; returns
    the root key they were sealed and linked under."""
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), REVISION)
    engine = create_engine(database_url)
    try:
        keyring = await unlock(
            create_sessionmaker(engine), master_key, iterations_for_new=MIN_KDF_ITERATIONS
        )
        root = keyring.current
        created = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
        audit_key = _hkdf(root.material, None, b"keyvault/audit")
        async with engine.begin() as connection:
            for number, (sub, api_key) in enumerate(sorted(keys.items())):
                salt, nonce, ciphertext = seal_v2(root, sub, api_key)
                await connection.execute(
                    OLD_API_KEYS.insert().values(
                        sub=sub,
                        format_version=2,
                        key_id=root.key_id,
                        salt=salt,
                        nonce=nonce,
                        ciphertext=ciphertext,
                        last4=api_key[-4:],
                        version=number + 1,
                        created_at=created,
                        updated_at=created + timedelta(minutes=number),
                    )
                )
            link = GENESIS
            for seq, event in enumerate(events, start=1):
                at = created + timedelta(seconds=seq, microseconds=seq)
                link = _link(audit_key, link, seq, root.key_id, at, event)
                await connection.execute(
                    OLD_AUDIT_EVENTS.insert().values(
                        seq=seq,
                        occurred_at=at,
                        actor=event.target,
                        client_id=None,
                        action=event.action,
                        target=event.target,
                        outcome=event.outcome,
                        key_version=event.key_version,
                        request_id=f"old-{seq}",
                        client_address="10.0.0.1",
                        user_agent="old-client",
                        key_id=root.key_id,
                        link=link,
                    )
                )
            seq = len(events)
            mac = hmac.digest(
                audit_key, b"keyvault/audit-head" + struct.pack(">Q", seq) + link, "sha256"
            )
            await connection.execute(
                update(OLD_AUDIT_HEAD)
                .where(OLD_AUDIT_HEAD.c.id == 1)
                .values(seq=seq, link=link, key_id=root.key_id, mac=mac)
            )
    finally:
        await engine.dispose()
    return root
