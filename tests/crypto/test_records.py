from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keyvault.crypto.records import (
    FORMAT_VERSION,
    V2_PROVIDER,
    Keyring,
    RecordIntegrityError,
    RootKey,
    SealedRecord,
    UnknownKeyIdError,
    associated_data,
    open_with,
    seal_with,
)

KAT_MASTER_KEY = "known-answer-master-key-0123456789abcdef"
KAT_DEPLOYMENT_SALT = bytes(range(16))
KAT_ITERATIONS = 600_000
KAT_OWNER = "google-oauth2|1234"
KAT_PROVIDER = "anthropic"
KAT_API_KEY = "sk-known-answer-0123456789"
KAT_RECORD_SALT = bytes(range(100, 116))
KAT_NONCE = bytes(range(200, 212))
KAT_KEY_ID = "c8f868bef2011fb8"
KAT_VERIFIER = "c3665b5c1347477c70911b56b79f5c8dc32156dba072d918a4574a8fd9397cce"
KAT_CIPHERTEXT = (
    "d791bdd0491c53634552ceed411cbe686082c6c9645bf3497bc0605604db9657a1cb0ed49074a2d34573"
)
# The same key sealed in format v2 (no provider in the associated data), as records were before.
KAT_V2_CIPHERTEXT = (
    "90ef44d01b0092d1d52becd4cb36ec576d282e3712efbebef7fd8165ad9565c2b1bebcfc0362ec9cccb7"
)

# A low iteration count keeps the non-KAT tests fast; the format does not depend on it.
FAST_ITERATIONS = 1_000


@pytest.fixture(scope="module")
def kat_root() -> RootKey:
    return RootKey.derive(KAT_MASTER_KEY, KAT_DEPLOYMENT_SALT, KAT_ITERATIONS)


@pytest.fixture(scope="module")
def root() -> RootKey:
    return RootKey.derive("a-master-key-for-crypto-tests-000000000", b"s" * 16, FAST_ITERATIONS)


@pytest.fixture(scope="module")
def other_root() -> RootKey:
    return RootKey.derive("another-master-key-for-crypto-tests-0000", b"s" * 16, FAST_ITERATIONS)


def _primitives_aad(version: int, key_id: str, owner: str, provider: str | None) -> bytes:
    aad = (
        b"keyvault"
        + struct.pack(">BH", version, len(key_id))
        + key_id.encode()
        + struct.pack(">H", len(owner.encode()))
        + owner.encode()
    )
    if provider is not None:
        aad += struct.pack(">H", len(provider.encode())) + provider.encode()
    return aad


def _primitives_seal(version: int, provider: str | None) -> str:
    """docs/crypto.md's description, spelled out with nothing from keyvault.crypto."""
    root = hashlib.pbkdf2_hmac(
        "sha256", KAT_MASTER_KEY.encode(), KAT_DEPLOYMENT_SALT, KAT_ITERATIONS, 32
    )
    key_id = hmac.digest(root, b"keyvault/key-id", "sha256")[:8].hex()
    assert key_id == KAT_KEY_ID
    record_key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=KAT_RECORD_SALT,
        info=f"keyvault/record/v{version}".encode(),
    ).derive(root)
    aad = _primitives_aad(version, key_id, KAT_OWNER, provider)
    return AESGCM(record_key).encrypt(KAT_NONCE, KAT_API_KEY.encode(), aad).hex()


def test_record_format_v3_known_answer(kat_root: RootKey) -> None:
    record = seal_with(
        kat_root, KAT_OWNER, KAT_PROVIDER, KAT_API_KEY, salt=KAT_RECORD_SALT, nonce=KAT_NONCE
    )

    assert kat_root.key_id == KAT_KEY_ID
    assert kat_root.verifier().hex() == KAT_VERIFIER
    assert record.format_version == FORMAT_VERSION == 3
    assert record.ciphertext.hex() == KAT_CIPHERTEXT
    assert open_with(kat_root, KAT_OWNER, KAT_PROVIDER, record) == KAT_API_KEY


def test_known_answers_match_the_documented_scheme_built_from_primitives() -> None:
    assert _primitives_seal(3, KAT_PROVIDER) == KAT_CIPHERTEXT
    assert _primitives_seal(2, None) == KAT_V2_CIPHERTEXT


def test_a_format_v2_record_opens_as_the_owners_openai_key_only(kat_root: RootKey) -> None:
    record = SealedRecord(
        2, KAT_KEY_ID, KAT_RECORD_SALT, KAT_NONCE, bytes.fromhex(KAT_V2_CIPHERTEXT)
    )
    assert V2_PROVIDER == "openai"
    assert open_with(kat_root, KAT_OWNER, "openai", record) == KAT_API_KEY
    for owner, provider in [(KAT_OWNER, "anthropic"), ("someone-else", "openai")]:
        with pytest.raises(RecordIntegrityError):
            open_with(kat_root, owner, provider, record)


def test_record_copied_to_another_providers_slot_does_not_open(root: RootKey) -> None:
    keyring = Keyring(root)
    openai_key = keyring.seal("alice", "openai", "sk-alice-secret-0001")
    with pytest.raises(RecordIntegrityError):
        keyring.open("alice", "anthropic", openai_key)
    assert keyring.open("alice", "openai", openai_key) == "sk-alice-secret-0001"


def test_seal_then_open_round_trips(root: RootKey) -> None:
    keyring = Keyring(root)
    record = keyring.seal("alice", "openai", "sk-alice-secret-0001")
    assert keyring.open("alice", "openai", record) == "sk-alice-secret-0001"


def test_every_seal_uses_fresh_salt_and_nonce(root: RootKey) -> None:
    keyring = Keyring(root)
    first, second = (
        keyring.seal("alice", "openai", "same-key"),
        keyring.seal("alice", "openai", "same-key"),
    )
    assert first.salt != second.salt
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


def test_record_copied_to_another_owner_does_not_open(root: RootKey) -> None:
    keyring = Keyring(root)
    alices = keyring.seal("alice", "openai", "sk-alice-secret-0001")
    with pytest.raises(RecordIntegrityError):
        keyring.open("bob", "openai", alices)


@pytest.mark.parametrize("field", ["salt", "nonce", "ciphertext"])
def test_altered_bytes_do_not_open(root: RootKey, field: str) -> None:
    keyring = Keyring(root)
    record = keyring.seal("alice", "openai", "sk-alice-secret-0001")
    original: bytes = getattr(record, field)
    changes: dict[str, Any] = {field: bytes([original[0] ^ 1]) + original[1:]}
    altered = dataclasses.replace(record, **changes)
    with pytest.raises(RecordIntegrityError):
        keyring.open("alice", "openai", altered)


def test_altered_format_version_does_not_open(root: RootKey) -> None:
    record = Keyring(root).seal("alice", "openai", "sk-alice-secret-0001")
    with pytest.raises(RecordIntegrityError):
        open_with(
            root, "alice", "openai", dataclasses.replace(record, format_version=FORMAT_VERSION + 1)
        )


def test_record_under_another_master_key_does_not_open(root: RootKey, other_root: RootKey) -> None:
    record = Keyring(other_root).seal("alice", "openai", "sk-alice-secret-0001")
    forged = dataclasses.replace(record, key_id=root.key_id)
    with pytest.raises(RecordIntegrityError):
        Keyring(root).open("alice", "openai", forged)


def test_unknown_key_id_is_reported_by_id(root: RootKey, other_root: RootKey) -> None:
    record = Keyring(other_root).seal("alice", "openai", "sk-alice-secret-0001")
    with pytest.raises(UnknownKeyIdError) as raised:
        Keyring(root).open("alice", "openai", record)
    assert raised.value.key_id == other_root.key_id


def test_previous_key_still_opens_its_records(root: RootKey, other_root: RootKey) -> None:
    old_record = Keyring(other_root).seal("alice", "openai", "sk-alice-secret-0001")
    keyring = Keyring(root, previous=(other_root,))
    assert keyring.open("alice", "openai", old_record) == "sk-alice-secret-0001"
    assert keyring.seal("alice", "openai", "x").key_id == root.key_id


def test_associated_data_is_unambiguous() -> None:
    # Without length prefixes ("ab", "c") and ("a", "bc") would bind to the same bytes.
    assert associated_data(3, "ab", "c", "p") != associated_data(3, "a", "bc", "p")
    assert associated_data(3, "k", "ab", "c") != associated_data(3, "k", "a", "bc")


def test_integrity_error_message_is_the_same_for_every_failure(root: RootKey) -> None:
    keyring = Keyring(root)
    record = keyring.seal("alice", "openai", "sk-alice-secret-0001")
    messages = set()
    for owner, candidate in [
        ("bob", record),
        ("alice", dataclasses.replace(record, ciphertext=record.ciphertext[:-1] + b"\0")),
        ("alice", dataclasses.replace(record, nonce=b"short")),
    ]:
        with pytest.raises(RecordIntegrityError) as raised:
            keyring.open(owner, "openai", candidate)
        messages.add(str(raised.value))
    assert messages == {"record failed its integrity check"}


def test_reprs_show_no_key_material(root: RootKey) -> None:
    keyring = Keyring(root)
    record = keyring.seal("alice", "openai", "sk-canary-REPR-0001")
    for shown in (repr(root), repr(keyring), repr(record)):
        assert root.material.hex() not in shown
        assert repr(root.material) not in shown
        assert record.ciphertext.hex() not in shown
        assert repr(record.ciphertext) not in shown
        assert "canary" not in shown


def test_sealed_record_fields_are_what_is_stored(root: RootKey) -> None:
    record = Keyring(root).seal("alice", "openai", "sk-alice-secret-0001")
    assert isinstance(record, SealedRecord)
    assert (len(record.salt), len(record.nonce)) == (16, 12)
    assert len(record.ciphertext) == len("sk-alice-secret-0001") + 16  # GCM tag
