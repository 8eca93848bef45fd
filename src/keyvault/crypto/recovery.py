"""The recovery slot: every keyring entry sealed to the recovery key, which only the kit's shares
give back.

    recovery secret  = 32 random bytes, split into SLIP-39 shares (master_keys.recovery)
    recovery key     = X25519 private key HKDF-SHA256(recovery secret, "keyvault/recovery/x25519");
                       its public half is stored in the database
    recovery copy    = version ‖ ephemeral public key (32) ‖ nonce (12) ‖ AES-256-GCM(
                           HKDF-SHA256(X25519(ephemeral, recovery public key),
                                       info = "keyvault/recovery/copy" ‖ ephemeral ‖ recipient),
                           nonce, key material,
                           associated data = "keyvault/recovery" ‖ version ‖ purpose ‖ key id)

Sealing needs only the public key, so any process adding a root key to the keyring (a rotation,
a new seal) adds its recovery copy without ever holding the recovery key. The associated data
binds each copy to its entry: a copy moved onto another row does not open. Every way opening can
fail raises crypto.keyring.UnwrapError.

This module does no I/O and imports nothing from the web or the database.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keyvault.crypto.keyring import KeyPurpose, UnwrapError
from keyvault.crypto.records import NONCE_BYTES

RECOVERY_SECRET_BYTES: Final = 32
COPY_FORMAT_VERSION: Final = 1
PUBLIC_KEY_BYTES: Final = 32

_PRIVATE_LABEL: Final = b"keyvault/recovery/x25519"
_COPY_LABEL: Final = b"keyvault/recovery/copy"
_AAD_PREFIX: Final = b"keyvault/recovery"
_HEADER: Final = struct.Struct(">B")


@dataclass(frozen=True, slots=True)
class RecoveryKey:
    """The private recovery key, from the kit's secret; its repr shows only the public half."""

    private: X25519PrivateKey = field(repr=False)
    public: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> RecoveryKey:
        if len(secret) != RECOVERY_SECRET_BYTES:
            raise ValueError("a recovery secret is 32 bytes")
        seed = _hkdf(secret, _PRIVATE_LABEL)
        private = X25519PrivateKey.from_private_bytes(seed)
        return cls(private, _raw(private.public_key()))

    def open(self, key_id: str, purpose: KeyPurpose, copy: bytes) -> bytes:
        """The key material of the keyring entry `key_id`, from its recovery copy."""
        header = _HEADER.size
        if len(copy) <= header + PUBLIC_KEY_BYTES + NONCE_BYTES or copy[0] != COPY_FORMAT_VERSION:
            raise UnwrapError()
        ephemeral = copy[header : header + PUBLIC_KEY_BYTES]
        nonce = copy[header + PUBLIC_KEY_BYTES : header + PUBLIC_KEY_BYTES + NONCE_BYTES]
        sealed = copy[header + PUBLIC_KEY_BYTES + NONCE_BYTES :]
        try:
            shared = self.private.exchange(X25519PublicKey.from_public_bytes(ephemeral))
            key = _hkdf(shared, _COPY_LABEL + ephemeral + self.public)
            return AESGCM(key).decrypt(nonce, sealed, _context(key_id, purpose))
        except (InvalidTag, ValueError):
            raise UnwrapError() from None


def new_recovery_secret() -> bytes:
    return os.urandom(RECOVERY_SECRET_BYTES)


def seal_copy(public_key: bytes, key_id: str, purpose: KeyPurpose, material: bytes) -> bytes:
    """A recovery copy of one keyring entry's material, sealed to the kit's public key."""
    recipient = X25519PublicKey.from_public_bytes(public_key)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = _raw(ephemeral.public_key())
    key = _hkdf(ephemeral.exchange(recipient), _COPY_LABEL + ephemeral_public + public_key)
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, material, _context(key_id, purpose))
    return _HEADER.pack(COPY_FORMAT_VERSION) + ephemeral_public + nonce + sealed


def _context(key_id: str, purpose: KeyPurpose) -> bytes:
    purpose_bytes, key_id_bytes = purpose.encode("ascii"), key_id.encode("ascii")
    return b"".join(
        (
            _AAD_PREFIX,
            struct.pack(">BB", COPY_FORMAT_VERSION, len(purpose_bytes)),
            purpose_bytes,
            struct.pack(">B", len(key_id_bytes)),
            key_id_bytes,
        )
    )


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _hkdf(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)
