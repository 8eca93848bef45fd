"""Record format v3: how an API key is sealed at rest.

    root key   = PBKDF2-HMAC-SHA256(master key, deployment salt, iterations)   once per process
                 (or 32 random bytes kept wrapped in the keyring, see crypto.keyring)
    key id     = hex(HMAC-SHA256(root key, "keyvault/key-id")[:8])
    record key = HKDF-SHA256(root key, salt = 16 fresh bytes, info = "keyvault/record/v3")
    ciphertext = AES-256-GCM(record key, nonce = 12 fresh bytes, api key,
                             associated data = format version ‖ key id ‖ owner's sub ‖ provider)

The associated data binds a record to its owner, to the provider whose key it is, and to the key
that sealed it: a record copied onto another user's row, or onto another provider's slot of the
same user, fails to open instead of handing over the wrong key. Every way opening can fail raises
the same `RecordIntegrityError`, so error messages are no oracle.

Format v2 records (info "keyvault/record/v2", no provider in the associated data) predate
providers: each is its owner's `V2_PROVIDER` key, and opens in that slot only. Every write seals
v3; rotation rewraps v2 records into v3.

This module does no I/O and imports nothing from the web or the database.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT_VERSION: Final = 3
V2_FORMAT_VERSION: Final = 2
# The provider every format v2 record belongs to: they were sealed when a user had one key.
V2_PROVIDER: Final = "openai"
ROOT_KEY_BYTES: Final = 32
RECORD_SALT_BYTES: Final = 16
NONCE_BYTES: Final = 12
DEPLOYMENT_SALT_BYTES: Final = 16
MIN_KDF_ITERATIONS: Final = 600_000
KEY_ID_BYTES: Final = 8

_AAD_PREFIX: Final = b"keyvault"
_RECORD_INFO: Final = {
    V2_FORMAT_VERSION: b"keyvault/record/v2",
    FORMAT_VERSION: b"keyvault/record/v3",
}
_KEY_ID_LABEL: Final = b"keyvault/key-id"
_VERIFIER_LABEL: Final = b"keyvault/verifier"


class RecordIntegrityError(Exception):
    """A record could not be opened: wrong owner or provider, wrong key, or altered bytes.
    Deliberately vague."""

    def __init__(self) -> None:
        super().__init__("record failed its integrity check")


class UnknownKeyIdError(Exception):
    """A record was sealed under a master key this process was not given."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no configured master key has key id {key_id}")
        self.key_id = key_id


@dataclass(frozen=True, slots=True)
class RootKey:
    """The key derived from one master key. Its repr names only the key id."""

    key_id: str
    material: bytes = field(repr=False)

    @classmethod
    def derive(cls, master_key: str, deployment_salt: bytes, iterations: int) -> RootKey:
        material = hashlib.pbkdf2_hmac(
            "sha256", master_key.encode("utf-8"), deployment_salt, iterations, ROOT_KEY_BYTES
        )
        return cls.from_material(material)

    @classmethod
    def from_material(cls, material: bytes) -> RootKey:
        """The root key holding these bytes (derived, or random from the keyring), by its key id."""
        key_id = hmac.digest(material, _KEY_ID_LABEL, "sha256")[:KEY_ID_BYTES].hex()
        return cls(key_id=key_id, material=material)

    def verifier(self) -> bytes:
        """A value stored in the database to recognise this key later without revealing it."""
        return hmac.digest(self.material, _VERIFIER_LABEL, "sha256")

    def matches(self, verifier: bytes) -> bool:
        return hmac.compare_digest(self.verifier(), verifier)

    def subkey(self, label: bytes) -> bytes:
        """An independent 32-byte key for another purpose (e.g. the audit chain)."""
        return _hkdf(self.material, salt=None, info=label)


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """What is stored for one API key. Nothing here is secret, but none of it belongs in a log."""

    format_version: int
    key_id: str
    salt: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)


class Keyring:
    """The current root key, which seals, and retired ones, which may still open old records.

    `master_key_ids` names the keys derived from configured master keys (the current master key
    first, then the previous ones in configuration order); `sealed_ids` the keys held wrapped in
    the keyring, which need no master key to open.
    """

    def __init__(
        self,
        current: RootKey,
        previous: tuple[RootKey, ...] = (),
        *,
        master_key_ids: tuple[str, ...] = (),
        sealed_ids: frozenset[str] = frozenset(),
    ) -> None:
        self.current = current
        self.previous = previous
        self.master_key_ids = master_key_ids
        self.sealed_ids = sealed_ids
        self._by_id = {key.key_id: key for key in (*previous, current)}

    def __repr__(self) -> str:
        return f"Keyring(current={self.current.key_id!r}, known={sorted(self._by_id)!r})"

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._by_id)

    def root(self, key_id: str) -> RootKey | None:
        """The root key with this id, current or retired (e.g. to check old audit links)."""
        return self._by_id.get(key_id)

    def seal(self, owner: str, provider: str, api_key: str) -> SealedRecord:
        return seal_with(
            self.current,
            owner,
            provider,
            api_key,
            salt=os.urandom(RECORD_SALT_BYTES),
            nonce=os.urandom(NONCE_BYTES),
        )

    def open(self, owner: str, provider: str, record: SealedRecord) -> str:
        root = self._by_id.get(record.key_id)
        if root is None:
            raise UnknownKeyIdError(record.key_id)
        return open_with(root, owner, provider, record)


def seal_with(
    root: RootKey, owner: str, provider: str, api_key: str, *, salt: bytes, nonce: bytes
) -> SealedRecord:
    """Seal with a given salt and nonce; only the known-answer test passes fixed ones."""
    aead = AESGCM(_hkdf(root.material, salt=salt, info=_RECORD_INFO[FORMAT_VERSION]))
    aad = associated_data(FORMAT_VERSION, root.key_id, owner, provider)
    ciphertext = aead.encrypt(nonce, api_key.encode("utf-8"), aad)
    return SealedRecord(FORMAT_VERSION, root.key_id, salt, nonce, ciphertext)


def open_with(root: RootKey, owner: str, provider: str, record: SealedRecord) -> str:
    info = _RECORD_INFO.get(record.format_version)
    if (
        info is None
        or (record.format_version == V2_FORMAT_VERSION and provider != V2_PROVIDER)
        or record.key_id != root.key_id
        or len(record.salt) != RECORD_SALT_BYTES
        or len(record.nonce) != NONCE_BYTES
    ):
        raise RecordIntegrityError()
    aead = AESGCM(_hkdf(root.material, salt=record.salt, info=info))
    aad = associated_data(record.format_version, record.key_id, owner, provider)
    try:
        plaintext = aead.decrypt(record.nonce, record.ciphertext, aad)
        return plaintext.decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        raise RecordIntegrityError() from None


def associated_data(format_version: int, key_id: str, owner: str, provider: str) -> bytes:
    """Length-prefixed fields, so no two (key id, owner, provider) can encode to the same bytes.
    Format v2 binds no provider: its records are all the V2_PROVIDER key (see open_with)."""
    key_id_bytes = key_id.encode("ascii")
    owner_bytes = owner.encode("utf-8")
    fields = [
        _AAD_PREFIX,
        struct.pack(">BH", format_version, len(key_id_bytes)),
        key_id_bytes,
        struct.pack(">H", len(owner_bytes)),
        owner_bytes,
    ]
    if format_version != V2_FORMAT_VERSION:
        provider_bytes = provider.encode("utf-8")
        fields += [struct.pack(">H", len(provider_bytes)), provider_bytes]
    return b"".join(fields)


def new_deployment_salt() -> bytes:
    return os.urandom(DEPLOYMENT_SALT_BYTES)


def _hkdf(key_material: bytes, *, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key_material)
