"""crypto.recovery: keyring entries sealed to the recovery key's public half, and opened with the
private half from the kit's secret; and the audit-key purpose of a wrapped entry."""

from __future__ import annotations

import pytest

from keyvault.crypto.keyring import KeyPurpose, UnwrapError, new_root_key, unwrap_with, wrap_with
from keyvault.crypto.recovery import RecoveryKey, new_recovery_secret, seal_copy

WRAPPING_KEY = bytes(range(32))


def test_a_copy_opens_with_the_kits_secret_and_hides_the_key() -> None:
    secret = new_recovery_secret()
    recovery_key = RecoveryKey.from_secret(secret)
    root = new_root_key()

    copy = seal_copy(recovery_key.public, root.key_id, KeyPurpose.root, root.material)

    assert root.material not in copy
    assert RecoveryKey.from_secret(secret).open(root.key_id, KeyPurpose.root, copy) == root.material


def test_the_same_secret_gives_the_same_recovery_key() -> None:
    secret = new_recovery_secret()
    assert RecoveryKey.from_secret(secret).public == RecoveryKey.from_secret(secret).public


def test_another_kits_secret_does_not_open_a_copy() -> None:
    root = new_root_key()
    copy = seal_copy(
        RecoveryKey.from_secret(new_recovery_secret()).public,
        root.key_id,
        KeyPurpose.root,
        root.material,
    )
    with pytest.raises(UnwrapError):
        RecoveryKey.from_secret(new_recovery_secret()).open(root.key_id, KeyPurpose.root, copy)


def test_a_copy_moved_to_another_entry_or_purpose_does_not_open() -> None:
    recovery_key = RecoveryKey.from_secret(new_recovery_secret())
    root, other = new_root_key(), new_root_key()
    copy = seal_copy(recovery_key.public, root.key_id, KeyPurpose.root, root.material)
    with pytest.raises(UnwrapError):
        recovery_key.open(other.key_id, KeyPurpose.root, copy)
    with pytest.raises(UnwrapError):
        recovery_key.open(root.key_id, KeyPurpose.audit, copy)


@pytest.mark.parametrize("cut", [1, 20, 60])
def test_an_altered_or_cut_copy_does_not_open(cut: int) -> None:
    recovery_key = RecoveryKey.from_secret(new_recovery_secret())
    root = new_root_key()
    copy = seal_copy(recovery_key.public, root.key_id, KeyPurpose.root, root.material)
    flipped = copy[:-1] + bytes([copy[-1] ^ 1])
    for damaged in (flipped, copy[:cut], b""):
        with pytest.raises(UnwrapError):
            recovery_key.open(root.key_id, KeyPurpose.root, damaged)


def test_the_recovery_key_repr_shows_no_private_half() -> None:
    secret = new_recovery_secret()
    recovery_key = RecoveryKey.from_secret(secret)
    assert secret.hex() not in repr(recovery_key)
    assert "private" not in repr(recovery_key)


def test_an_audit_key_wrapped_as_such_does_not_unwrap_as_a_root_key() -> None:
    material = new_root_key().material
    wrapped = wrap_with(WRAPPING_KEY, "env", material, KeyPurpose.audit)
    assert unwrap_with(WRAPPING_KEY, "env", wrapped, KeyPurpose.audit) == material
    with pytest.raises(UnwrapError):
        unwrap_with(WRAPPING_KEY, "env", wrapped)
