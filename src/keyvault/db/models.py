"""Tables. Timestamps are always UTC; SQLite hands them back naive, so they are re-tagged on load."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, MetaData, SmallInteger, String
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SUB_MAX_LENGTH = 255
KEY_ID_LENGTH = 16
PROVIDER_NAME_MAX_LENGTH = 32
LABEL_MAX_LENGTH = 64


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Deployment(Base):
    """One row: the salt and iteration count the root keys are derived with, fixed at creation."""

    __tablename__ = "deployment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kdf_salt: Mapped[bytes] = mapped_column(LargeBinary)
    kdf_iterations: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MasterKeyVerifier(Base):
    """Proof that a master key belongs to this deployment, without storing the key."""

    __tablename__ = "master_key_verifiers"

    key_id: Mapped[str] = mapped_column(String(KEY_ID_LENGTH), primary_key=True)
    verifier: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set when a rotation replaced this key: it may still open old records as a previous key, but
    # starting with it alone as the current key is refused (see master_keys.unlock).
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


SEAL_KIND_LENGTH = 16
KEY_PURPOSE_LENGTH = 8


class RootKeyEntry(Base):
    """One root key of the keyring, stored only wrapped by its seal (see master_keys.keyring).

    `wrapped` is NULL for a root key derived from a master key (the env seal's first entries):
    its material is PBKDF2 of MASTER_ENCRYPTION_KEY, checked against its verifier. The one entry
    with no `retired_at` is the active key, which seals new records; retired ones still open theirs.
    An entry of purpose "audit" is a removed root key of which only the audit key is kept, so the
    events it linked stay verifiable. `recovery_wrapped` is the same key sealed to the recovery
    kit's public key (master_keys.recovery), NULL while there is no kit.
    """

    __tablename__ = "root_keys"

    key_id: Mapped[str] = mapped_column(String(KEY_ID_LENGTH), primary_key=True)
    seal: Mapped[str] = mapped_column(String(SEAL_KIND_LENGTH))
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    purpose: Mapped[str] = mapped_column(String(KEY_PURPOSE_LENGTH), server_default="root")
    recovery_wrapped: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class RecoveryKit(Base):
    """One row once a kit is made: the public half of the recovery key, whose private half only
    the kit's shares give back; a new kit replaces it and every recovery copy."""

    __tablename__ = "recovery_kit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    shares: Mapped[int] = mapped_column(SmallInteger)
    threshold: Mapped[int] = mapped_column(SmallInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Lease(Base):
    """A named lease: the holder may do the named work until `expires_at`, renewing as it goes."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKeyRecord(Base):
    """One user's key for one provider. The primary key (sub, provider) is the read path's index,
    and its leading column serves the listing of a user's keys."""

    __tablename__ = "api_keys"

    sub: Mapped[str] = mapped_column(String(SUB_MAX_LENGTH), primary_key=True)
    provider: Mapped[str] = mapped_column(String(PROVIDER_NAME_MAX_LENGTH), primary_key=True)
    format_version: Mapped[int] = mapped_column(SmallInteger)
    key_id: Mapped[str] = mapped_column(String(KEY_ID_LENGTH), index=True)
    salt: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    last4: Mapped[str] = mapped_column(String(4))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    label: Mapped[str | None] = mapped_column(String(LABEL_MAX_LENGTH), nullable=True)
    # After this moment the key is no longer handed out; the record stays until replaced or deleted.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


AUDIT_ACTION_LENGTH = 16
AUDIT_OUTCOME_LENGTH = 32
AUDIT_REQUEST_ID_LENGTH = 128
AUDIT_ADDRESS_LENGTH = 64
AUDIT_USER_AGENT_LENGTH = 256
AUDIT_VALIDATION_LENGTH = 16
AUDIT_PATH_LENGTH = 128


class AuditEventRecord(Base):
    """One audited operation, chained to the one before it by `link` (see audit.py)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(String(SUB_MAX_LENGTH), index=True)
    client_id: Mapped[str | None] = mapped_column(String(SUB_MAX_LENGTH))
    action: Mapped[str] = mapped_column(String(AUDIT_ACTION_LENGTH))
    target: Mapped[str | None] = mapped_column(String(SUB_MAX_LENGTH), index=True)
    outcome: Mapped[str] = mapped_column(String(AUDIT_OUTCOME_LENGTH))
    key_version: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(AUDIT_REQUEST_ID_LENGTH))
    client_address: Mapped[str | None] = mapped_column(String(AUDIT_ADDRESS_LENGTH))
    user_agent: Mapped[str | None] = mapped_column(String(AUDIT_USER_AGENT_LENGTH))
    key_id: Mapped[str] = mapped_column(String(KEY_ID_LENGTH))
    link: Mapped[bytes] = mapped_column(LargeBinary)
    # Which provider's key; empty on events from before there were providers, and on events
    # about no single key (the list of a user's keys, rotation).
    provider: Mapped[str | None] = mapped_column(String(PROVIDER_NAME_MAX_LENGTH))
    # What the provider said of the key when a PUT asked it first (?validate=true).
    validation: Mapped[str | None] = mapped_column(String(AUDIT_VALIDATION_LENGTH))
    # A call through the provider proxy: the allowed path it matched (never the path itself), the
    # provider's status, how long the call took and the body bytes each way. Empty otherwise.
    path: Mapped[str | None] = mapped_column(String(AUDIT_PATH_LENGTH))
    upstream_status: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    request_bytes: Mapped[int | None] = mapped_column(BigInteger)
    response_bytes: Mapped[int | None] = mapped_column(BigInteger)


class AuditHead(Base):
    """One row: the chain's last sequence number and link, MACed so a rewound tail shows."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    link: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str | None] = mapped_column(String(KEY_ID_LENGTH))
    mac: Mapped[bytes | None] = mapped_column(LargeBinary)
