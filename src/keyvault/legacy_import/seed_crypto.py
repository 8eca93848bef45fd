"""The seed application's scheme, read-only: open its Fernet tokens so they can be sealed anew.

    fernet key = urlsafe_b64encode(PBKDF2-HMAC-SHA256(master key as UTF-8, row salt, 100,000, 32))
    token      = Fernet(fernet key).encrypt(api key)   (AES-128-CBC + HMAC-SHA256)

Unlike `crypto`, failures here name their reason: this runs in an operator's import, where "salt is
8 bytes" is what they need to hear, and nobody can use the message to probe the vault. The API key
itself never appears in a reason. No I/O; the functions run in worker processes.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Final

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pydantic import ValidationError

from keyvault.keys.schemas import ApiKeyWrite

SEED_ITERATIONS: Final = 100_000
SEED_SALT_BYTES: Final = 16
FERNET_KEY_BYTES: Final = 32
_FERNET_VERSION: Final = 0x80
_FERNET_MIN_BYTES: Final = 1 + 8 + 16 + 16 + 32  # version, timestamp, IV, one block, HMAC
WRONG_KEY_REASON: Final = (
    "the token does not verify: wrong master key, wrong --iterations, or an altered token"
)


@dataclass(frozen=True, slots=True)
class SeedToken:
    """One seed row's sealed key, as read. Not secret, but not for logs either."""

    sub: str
    token: str = field(repr=False)
    salt: object = field(repr=False)  # bytes when well-formed; whatever the column held otherwise


@dataclass(frozen=True, slots=True)
class Opened:
    sub: str
    api_key: str | None = field(default=None, repr=False)
    failure: str | None = None
    # Whether the token's HMAC verified under the derived key; None when it was never tried
    # (malformed salt or token say nothing about whether the master key is right).
    verified: bool | None = None

    @property
    def wrong_key(self) -> bool:
        return self.verified is False


def fernet_key(master_key: str, salt: bytes, iterations: int = SEED_ITERATIONS) -> bytes:
    # cryptography's PBKDF2 rather than hashlib's: it runs in OpenSSL and derives faster.
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=FERNET_KEY_BYTES, salt=salt, iterations=iterations
    )
    return base64.urlsafe_b64encode(kdf.derive(master_key.encode("utf-8")))


def open_token(master_key: str, iterations: int, row: SeedToken) -> Opened:
    """The API key in a seed row, cleaned as a PUT would clean it, or the reason it cannot be had."""
    salt = bytes(row.salt) if isinstance(row.salt, bytes | bytearray | memoryview) else None
    reason = _salt_problem(row.salt, salt) or _token_problem(row.token)
    if reason is not None:
        return Opened(row.sub, failure=reason)
    assert salt is not None
    try:
        plaintext = Fernet(fernet_key(master_key, salt, iterations)).decrypt(row.token)
    except InvalidToken:
        return Opened(row.sub, failure=WRONG_KEY_REASON, verified=False)
    try:
        text = plaintext.decode("utf-8")
    except UnicodeDecodeError:
        return Opened(row.sub, failure="the decrypted key is not UTF-8 text", verified=True)
    try:
        cleaned = ApiKeyWrite.model_validate({"api_key": text}).api_key.get_secret_value()
    except ValidationError as error:
        rules = "; ".join(str(item["msg"]) for item in error.errors(include_input=False))
        failure = f"the decrypted key is not a valid API key ({rules})"
        return Opened(row.sub, failure=failure, verified=True)
    return Opened(row.sub, api_key=cleaned, verified=True)


def _salt_problem(raw: object, salt: bytes | None) -> str | None:
    if raw is None:
        return "the salt is missing"
    if salt is None:
        return f"the salt is {type(raw).__name__}, not bytes"
    if len(salt) != SEED_SALT_BYTES:
        return f"the salt is {len(salt)} bytes, expected {SEED_SALT_BYTES}"
    return None


def _token_problem(token: str) -> str | None:
    """Structure only (Fernet would say InvalidToken for all of these), so reasons stay distinct."""
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return "the token is not URL-safe base64"
    if len(raw) < _FERNET_MIN_BYTES or raw[0] != _FERNET_VERSION or (len(raw) - 57) % 16:
        return "the token is not a Fernet token"
    return None


# Worker processes: the master key arrives once through the pool's initializer (a pipe, not argv).
_worker_master_key: str = ""
_worker_iterations: int = SEED_ITERATIONS


def init_worker(master_key: str, iterations: int) -> None:
    global _worker_master_key, _worker_iterations
    _worker_master_key, _worker_iterations = master_key, iterations


def open_tokens_in_worker(rows: list[SeedToken]) -> list[Opened]:
    return [open_token(_worker_master_key, _worker_iterations, row) for row in rows]
