"""Root keys at rest: random root keys, and the wrapped form the keyring stores them in.

    root key     = 32 random bytes, named by its key id (RootKey.from_material)
    wrapped      = format version ‖ nonce (12 bytes) ‖ AES-256-GCM(wrapping key, nonce, root key,
                   associated data = "keyvault/root-key" ‖ format version ‖ seal kind)
                   (an audit key kept for a removed root key: "keyvault/audit-key" instead)
    wrapping key = the seal's: an AES-256 key inside an HSM, which runs the AES-GCM itself (pkcs11),
                   or HKDF-SHA256(env root key, info = "keyvault/seal/env") here (env)

An unwrapped root key is accepted only when its key id is the one stored beside it, so a wrapped
key moved onto another row of the keyring fails like a damaged one. Every way unwrapping can fail
raises the same `UnwrapError`.

This module does no I/O and imports nothing from the web or the database.
"""

from __future__ import annotations

import os
import struct
from enum import StrEnum
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyvault.crypto.records import NONCE_BYTES, ROOT_KEY_BYTES, RootKey

WRAP_FORMAT_VERSION: Final = 1
GCM_TAG_BYTES: Final = 16


class KeyPurpose(StrEnum):
    """What a keyring entry holds: a root key, or only the audit key of a removed root key."""

    root = "root"
    audit = "audit"


_WRAP_AAD_PREFIX: Final = {
    KeyPurpose.root: b"keyvault/root-key",
    KeyPurpose.audit: b"keyvault/audit-key",
}
_ENV_WRAPPING_LABEL: Final = b"keyvault/seal/env"
_HEADER: Final = struct.Struct(">B")


class UnwrapError(Exception):
    """A wrapped root key did not unwrap: another wrapping key, or altered bytes. Deliberately vague."""

    def __init__(self) -> None:
        super().__init__("the wrapped root key did not unwrap")


def new_root_key() -> RootKey:
    return RootKey.from_material(os.urandom(ROOT_KEY_BYTES))


def wrap_context(seal_kind: str, purpose: KeyPurpose = KeyPurpose.root) -> bytes:
    """The associated data of a wrapped key: what it is, which format and which seal made it."""
    kind = seal_kind.encode("ascii")
    return b"".join((_WRAP_AAD_PREFIX[purpose], _HEADER.pack(WRAP_FORMAT_VERSION), kind))


def encode_wrapped(nonce: bytes, sealed: bytes) -> bytes:
    """The stored form of an AES-GCM output (`sealed` is the ciphertext followed by its tag)."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError("a wrapping nonce is 12 bytes")
    return _HEADER.pack(WRAP_FORMAT_VERSION) + nonce + sealed


def decode_wrapped(wrapped: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext ‖ tag) of a stored wrapped key; UnwrapError for anything malformed."""
    header = _HEADER.size
    if (
        len(wrapped) != header + NONCE_BYTES + ROOT_KEY_BYTES + GCM_TAG_BYTES
        or _HEADER.unpack_from(wrapped)[0] != WRAP_FORMAT_VERSION
    ):
        raise UnwrapError()
    return wrapped[header : header + NONCE_BYTES], wrapped[header + NONCE_BYTES :]


def accept_unwrapped(key_id: str, material: bytes) -> RootKey:
    """The root key unwrapped for the keyring entry `key_id`, if it is that entry's key."""
    if len(material) != ROOT_KEY_BYTES:
        raise UnwrapError()
    root = RootKey.from_material(material)
    if root.key_id != key_id:
        raise UnwrapError()
    return root


def env_wrapping_key(root: RootKey) -> bytes:
    """The env seal's wrapping key, from the root key of MASTER_ENCRYPTION_KEY."""
    return root.subkey(_ENV_WRAPPING_LABEL)


def wrap_with(
    wrapping_key: bytes, seal_kind: str, material: bytes, purpose: KeyPurpose = KeyPurpose.root
) -> bytes:
    """Wrap in this process (the env seal); an HSM seal does the same AES-GCM inside the token."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(wrapping_key).encrypt(nonce, material, wrap_context(seal_kind, purpose))
    return encode_wrapped(nonce, sealed)


def unwrap_with(
    wrapping_key: bytes, seal_kind: str, wrapped: bytes, purpose: KeyPurpose = KeyPurpose.root
) -> bytes:
    nonce, sealed = decode_wrapped(wrapped)
    try:
        return AESGCM(wrapping_key).decrypt(nonce, sealed, wrap_context(seal_kind, purpose))
    except InvalidTag:
        raise UnwrapError() from None
