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
KAT_API_KEY = "sk-known-answer-0123456789"
KAT_RECORD_SALT = bytes(range(100, 116))
KAT_NONCE = bytes(range(200, 212))
KAT_KEY_ID = "c8f868bef2011fb8"
KAT_VERIFIER = "c3665b5c1347477c70911b56b79f5c8dc32156dba072d918a4574a8fd9397cce"
KAT_CIPHERTEXT = (
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


def test_record_format_v2_known_answer(kat_root: RootKey) -> None:
    record = seal_with(kat_root, KAT_OWNER, KAT_API_KEY, salt=KAT_RECORD_SALT, nonce=KAT_NONCE)

    assert kat_root.key_id == KAT_KEY_ID
    assert kat_root.verifier().hex() == KAT_VERIFIER
    assert record.format_version == 2
    assert record.ciphertext.hex() == KAT_CIPHERTEXT
    assert open_with(kat_root, KAT_OWNER, record) == KAT_API_KEY


def test_known_answer_matches_the_documented_scheme_built_from_primitives() -> None:
    """docs/crypto.md's description, spelled out with nothing from keyvault.crypto."""
    root = hashlib.pbkdf2_hmac(
        "sha256", KAT_MASTER_KEY.encode(), KAT_DEPLOYMENT_SALT, KAT_ITERATIONS, 32
    )
    key_id = hmac.digest(root, b"keyvault/key-id", "sha256")[:8].hex()
    record_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=KAT_RECORD_SALT, info=b"keyvault/record/v2"
    ).derive(root)
    aad = (
        b"keyvault"
        + struct.pack(">BH", 2, len(key_id))
        + key_id.encode()
        + struct.pack(">H", len(KAT_OWNER.encode()))
        + KAT_OWNER.encode()
    )
    ciphertext = AESGCM(record_key).encrypt(KAT_NONCE, KAT_API_KEY.encode(), aad)

    assert key_id == KAT_KEY_ID
    assert ciphertext.hex() == KAT_CIPHERTEXT


def test_seal_then_open_round_trips(root: RootKey) -> None:
    keyring = Keyring(root)
    record = keyring.seal("alice", "sk-alice-secret-0001")
    assert keyring.open("alice", record) == "sk-alice-secret-0001"


def test_every_seal_uses_fresh_salt_and_nonce(root: RootKey) -> None:
    keyring = Keyring(root)
    first, second = keyring.seal("alice", "same-key"), keyring.seal("alice", "same-key")
    assert first.salt != second.salt
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


def test_record_copied_to_another_owner_does_not_open(root: RootKey) -> None:
    keyring = Keyring(root)
    alices = keyring.seal("alice", "sk-alice-secret-0001")
    with pytest.raises(RecordIntegrityError):
        keyring.open("bob", alices)


@pytest.mark.parametrize("field", ["salt", "nonce", "ciphertext"])
def test_altered_bytes_do_not_open(root: RootKey, field: str) -> None:
    keyring = Keyring(root)
    record = keyring.seal("alice", "sk-alice-secret-0001")
    original: bytes = getattr(record, field)
    changes: dict[str, Any] = {field: bytes([original[0] ^ 1]) + original[1:]}
    altered = dataclasses.replace(record, **changes)
    with pytest.raises(RecordIntegrityError):
        keyring.open("alice", altered)


def test_altered_format_version_does_not_open(root: RootKey) -> None:
    record = Keyring(root).seal("alice", "sk-alice-secret-0001")
    with pytest.raises(RecordIntegrityError):
        open_with(root, "alice", dataclasses.replace(record, format_version=FORMAT_VERSION + 1))


def test_record_under_another_master_key_does_not_open(root: RootKey, other_root: RootKey) -> None:
    record = Keyring(other_root).seal("alice", "sk-alice-secret-0001")
    forged = dataclasses.replace(record, key_id=root.key_id)
    with pytest.raises(RecordIntegrityError):
        Keyring(root).open("alice", forged)


def test_unknown_key_id_is_reported_by_id(root: RootKey, other_root: RootKey) -> None:
    record = Keyring(other_root).seal("alice", "sk-alice-secret-0001")
    with pytest.raises(UnknownKeyIdError) as raised:
        Keyring(root).open("alice", record)
    assert raised.value.key_id == other_root.key_id


def test_previous_key_still_opens_its_records(root: RootKey, other_root: RootKey) -> None:
    old_record = Keyring(other_root).seal("alice", "sk-alice-secret-0001")
    keyring = Keyring(root, previous=(other_root,))
    assert keyring.open("alice", old_record) == "sk-alice-secret-0001"
    assert keyring.seal("alice", "x").key_id == root.key_id


def test_associated_data_is_unambiguous() -> None:
    # Without length prefixes ("ab", "c") and ("a", "bc") would bind to the same bytes.
    assert associated_data(2, "ab", "c") != associated_data(2, "a", "bc")


def test_integrity_error_message_is_the_same_for_every_failure(root: RootKey) -> None:
    keyring = Keyring(root)
    record = keyring.seal("alice", "sk-alice-secret-0001")
    messages = set()
    for owner, candidate in [
        ("bob", record),
        ("alice", dataclasses.replace(record, ciphertext=record.ciphertext[:-1] + b"\0")),
        ("alice", dataclasses.replace(record, nonce=b"short")),
    ]:
        with pytest.raises(RecordIntegrityError) as raised:
            keyring.open(owner, candidate)
        messages.add(str(raised.value))
    assert messages == {"record failed its integrity check"}


def test_reprs_show_no_key_material(root: RootKey) -> None:
    keyring = Keyring(root)
    record = keyring.seal("alice", "sk-canary-REPR-0001")
    for shown in (repr(root), repr(keyring), repr(record)):
        assert root.material.hex() not in shown
        assert repr(root.material) not in shown
        assert record.ciphertext.hex() not in shown
        assert repr(record.ciphertext) not in shown
        assert "canary" not in shown


def test_sealed_record_fields_are_what_is_stored(root: RootKey) -> None:
    record = Keyring(root).seal("alice", "sk-alice-secret-0001")
    assert isinstance(record, SealedRecord)
    assert (len(record.salt), len(record.nonce)) == (16, 12)
    assert len(record.ciphertext) == len("sk-alice-secret-0001") + 16  # GCM tag
