"""Seals: what wraps the keyring's root keys at rest, chosen by KEYVAULT_SEAL.

- `env` (the default): the wrapping key comes from MASTER_ENCRYPTION_KEY. A deployment's first
  root keys are the master keys' derived keys themselves, stored as entries without wrapped bytes.
- `pkcs11`: an AES-256 key inside a PKCS#11 token wraps and unwraps, in the token; it never leaves
  it (master_keys.pkcs11_seal, which imports python-pkcs11 only when this seal is chosen).

A seal is used at start only: the keyring is unwrapped once, and no request calls the seal.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from keyvault.config import Settings
from keyvault.crypto.keyring import KeyPurpose, env_wrapping_key, unwrap_with, wrap_with
from keyvault.crypto.records import RootKey


class SealKind(StrEnum):
    env = "env"
    pkcs11 = "pkcs11"


class SealError(Exception):
    """The seal cannot be used: one line, naming settings and labels, never a PIN or a key."""


class KeyringUnwrapError(SealError):
    def __init__(self, seal: Seal, key_id: str) -> None:
        super().__init__(
            f"the {seal.describe()} does not unwrap this database's keyring (root key "
            f"{key_id}); it is not the key this deployment was sealed with; nothing was written"
        )


class Seal(Protocol):
    kind: SealKind

    def describe(self) -> str:
        """Which seal this is, for logs and `keyvault seal status`; holds no secret."""
        ...

    def wrap(self, material: bytes, purpose: KeyPurpose = KeyPurpose.root) -> bytes: ...

    def unwrap(self, wrapped: bytes, purpose: KeyPurpose = KeyPurpose.root) -> bytes:
        """The key's bytes; crypto.keyring.UnwrapError when this seal did not wrap them."""
        ...

    def close(self) -> None: ...


class EnvSeal:
    """The env seal's wrapping key, from the root key of the current MASTER_ENCRYPTION_KEY."""

    kind = SealKind.env

    def __init__(self, root: RootKey) -> None:
        self._wrapping_key = env_wrapping_key(root)
        self.master_key_id = root.key_id

    def __repr__(self) -> str:
        return "EnvSeal()"

    def describe(self) -> str:
        return "env (MASTER_ENCRYPTION_KEY)"

    def wrap(self, material: bytes, purpose: KeyPurpose = KeyPurpose.root) -> bytes:
        return wrap_with(self._wrapping_key, self.kind, material, purpose)

    def unwrap(self, wrapped: bytes, purpose: KeyPurpose = KeyPurpose.root) -> bytes:
        return unwrap_with(self._wrapping_key, self.kind, wrapped, purpose)

    def close(self) -> None:
        pass


def configured_master_keys(settings: Settings) -> tuple[str, ...]:
    """The current master key and the previous ones, or none when MASTER_ENCRYPTION_KEY is unset
    (the pkcs11 seal needs it only to open entries still derived from it)."""
    if settings.master_encryption_key is None and settings.master_encryption_key_file is None:
        return ()
    return (settings.master_key(), *settings.previous_master_keys())
