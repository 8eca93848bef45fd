"""crypto.keyring: random root keys and their wrapped form (software AES-GCM, as the env seal does)."""

from __future__ import annotations

import os

import pytest

from keyvault.crypto.keyring import (
    UnwrapError,
    accept_unwrapped,
    decode_wrapped,
    env_wrapping_key,
    new_root_key,
    unwrap_with,
    wrap_context,
    wrap_with,
)
from keyvault.crypto.records import RootKey

WRAPPING_KEY = bytes(range(32))


def test_new_root_keys_are_random_and_named_by_their_material() -> None:
    first, second = new_root_key(), new_root_key()
    assert first.key_id != second.key_id
    assert first.material != second.material
    assert RootKey.from_material(first.material) == first
    assert first.material.hex() not in repr(first)


def test_a_derived_root_key_is_named_as_from_its_material() -> None:
    derived = RootKey.derive("a-master-key-0123456789-abcdefghijklmnop", bytes(16), 1_000)
    assert RootKey.from_material(derived.material).key_id == derived.key_id


def test_wrapped_key_unwraps_to_the_same_root_key_and_hides_it() -> None:
    root = new_root_key()
    wrapped = wrap_with(WRAPPING_KEY, "env", root.material)
    assert root.material not in wrapped
    assert accept_unwrapped(root.key_id, unwrap_with(WRAPPING_KEY, "env", wrapped)) == root


def test_each_wrap_uses_a_fresh_nonce() -> None:
    material = new_root_key().material
    assert wrap_with(WRAPPING_KEY, "env", material) != wrap_with(WRAPPING_KEY, "env", material)


def test_another_wrapping_key_does_not_unwrap() -> None:
    wrapped = wrap_with(WRAPPING_KEY, "env", new_root_key().material)
    with pytest.raises(UnwrapError):
        unwrap_with(os.urandom(32), "env", wrapped)


def test_a_key_wrapped_for_one_seal_does_not_unwrap_as_another() -> None:
    wrapped = wrap_with(WRAPPING_KEY, "env", new_root_key().material)
    with pytest.raises(UnwrapError):
        unwrap_with(WRAPPING_KEY, "pkcs11", wrapped)
    assert wrap_context("env") != wrap_context("pkcs11")


@pytest.mark.parametrize("position", [0, 1, 12, 30, -1])
def test_any_altered_byte_fails_to_unwrap(position: int) -> None:
    wrapped = bytearray(wrap_with(WRAPPING_KEY, "env", new_root_key().material))
    wrapped[position] ^= 0x01
    with pytest.raises(UnwrapError):
        unwrap_with(WRAPPING_KEY, "env", bytes(wrapped))


@pytest.mark.parametrize("length", [0, 1, 28, 60, 62, 100])
def test_malformed_wrapped_keys_are_refused(length: int) -> None:
    with pytest.raises(UnwrapError):
        decode_wrapped(bytes([1]) + bytes(max(length - 1, 0)))


def test_a_wrapped_key_moved_to_another_entry_is_refused() -> None:
    """The key id is stored beside the wrapped key; the unwrapped key must be the one it names."""
    mine, theirs = new_root_key(), new_root_key()
    unwrapped = unwrap_with(WRAPPING_KEY, "env", wrap_with(WRAPPING_KEY, "env", theirs.material))
    with pytest.raises(UnwrapError):
        accept_unwrapped(mine.key_id, unwrapped)
    with pytest.raises(UnwrapError):
        accept_unwrapped(mine.key_id, mine.material[:16])


def test_the_env_wrapping_key_is_neither_the_root_key_nor_its_other_subkeys() -> None:
    root = new_root_key()
    wrapping = env_wrapping_key(root)
    assert len(wrapping) == 32
    assert wrapping not in (root.material, root.subkey(b"keyvault/audit"))
    assert env_wrapping_key(root) == wrapping


def test_unwrap_error_says_nothing_about_the_key() -> None:
    assert str(UnwrapError()) == "the wrapped root key did not unwrap"
