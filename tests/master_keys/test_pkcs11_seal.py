"""The pkcs11 seal against a real SoftHSM2 token: the key it makes, wrapping through the token, and
each way opening it is refused (one line, naming the setting, never the PIN)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pkcs11
import pytest

from keyvault.crypto.keyring import UnwrapError, accept_unwrapped, new_root_key
from keyvault.master_keys.pkcs11_seal import Pkcs11Seal, Pkcs11Settings, create_key, open_hsm_seal
from keyvault.master_keys.seals import SealError
from tests.conftest import make_settings
from tests.softhsm import SO_PIN, SoftHsm


def _objects_labelled(softhsm: SoftHsm, label: str) -> list[pkcs11.Object]:
    token = pkcs11.lib(str(softhsm.module)).get_token(token_label=softhsm.token_label)
    with token.open(user_pin=softhsm.pin) as session:
        return list(session.get_objects({pkcs11.Attribute.LABEL: label}))


def _refusal(config: Pkcs11Settings) -> str:
    with pytest.raises(SealError) as raised:
        Pkcs11Seal.open(config)
    message = str(raised.value)
    assert "\n" not in message
    assert message.endswith("nothing was written")
    assert config.pin not in message
    assert config.pin not in repr(raised.value)
    return message


def test_created_key_is_an_aes_256_token_key_that_never_leaves_the_token(
    softhsm: SoftHsm, hsm_key: str
) -> None:
    token = pkcs11.lib(str(softhsm.module)).get_token(token_label=softhsm.token_label)
    with token.open(user_pin=softhsm.pin) as session:
        key = session.get_key(object_class=pkcs11.ObjectClass.SECRET_KEY, label=hsm_key)
        assert key.key_type == pkcs11.KeyType.AES
        assert key.key_length == 256
        assert key[pkcs11.Attribute.TOKEN]
        assert key[pkcs11.Attribute.SENSITIVE]
        assert not key[pkcs11.Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.AttributeSensitive):
            key[pkcs11.Attribute.VALUE]


def test_create_key_refuses_a_label_that_exists(softhsm: SoftHsm, hsm_key: str) -> None:
    with pytest.raises(SealError) as raised:
        create_key(softhsm.config(hsm_key))
    assert "already holds an object labelled" in str(raised.value)
    assert len(_objects_labelled(softhsm, hsm_key)) == 1


def test_wrapped_root_key_unwraps_through_the_token_and_never_holds_it(
    softhsm: SoftHsm, hsm_key: str
) -> None:
    root = new_root_key()
    seal = Pkcs11Seal.open(softhsm.config(hsm_key))
    try:
        wrapped = seal.wrap(root.material)
        assert root.material not in wrapped
        assert seal.wrap(root.material) != wrapped
        assert accept_unwrapped(root.key_id, seal.unwrap(wrapped)) == root
    finally:
        seal.close()
    reopened = Pkcs11Seal.open(softhsm.config(hsm_key))
    try:
        assert reopened.unwrap(wrapped) == root.material
    finally:
        reopened.close()


def test_another_key_in_the_token_does_not_unwrap(softhsm: SoftHsm, hsm_key: str) -> None:
    seal = Pkcs11Seal.open(softhsm.config(hsm_key))
    other = Pkcs11Seal.open(softhsm.config(softhsm.new_key()))
    try:
        wrapped = seal.wrap(new_root_key().material)
        with pytest.raises(UnwrapError):
            other.unwrap(wrapped)
        altered = bytearray(wrapped)
        altered[-1] ^= 1
        with pytest.raises(UnwrapError):
            seal.unwrap(bytes(altered))
    finally:
        seal.close()
        other.close()


def test_missing_module_file_is_refused(softhsm: SoftHsm, tmp_path: Path) -> None:
    config = dataclasses.replace(softhsm.config("any"), library=tmp_path / "libmissing.so")
    assert "KEYVAULT_PKCS11_LIBRARY" in _refusal(config)
    assert "is not a file" in _refusal(config)


def test_a_file_that_is_no_pkcs11_module_is_refused(softhsm: SoftHsm, tmp_path: Path) -> None:
    not_a_module = tmp_path / "libfake.so"
    not_a_module.write_text("not a shared object")
    config = dataclasses.replace(softhsm.config("any"), library=not_a_module)
    assert "cannot be loaded as a PKCS#11 module" in _refusal(config)


def test_no_token_with_the_label_is_refused(softhsm: SoftHsm) -> None:
    config = dataclasses.replace(softhsm.config("any"), token_label="no-such-token")
    message = _refusal(config)
    assert "no PKCS#11 token 'no-such-token' (KEYVAULT_PKCS11_TOKEN_LABEL)" in message


def test_wrong_pin_is_refused_without_echoing_it(softhsm: SoftHsm, hsm_key: str) -> None:
    for wrong in ("wrong-pin-canary-0a9b", SO_PIN):
        config = dataclasses.replace(softhsm.config(hsm_key), pin=wrong)
        message = _refusal(config)
        assert "the PIN (KEYVAULT_PKCS11_PIN) is wrong" in message
        assert softhsm.pin not in message


def test_no_key_with_the_label_is_refused(softhsm: SoftHsm) -> None:
    message = _refusal(softhsm.config("no-such-key"))
    assert "no AES key 'no-such-key' (KEYVAULT_PKCS11_KEY_LABEL)" in message
    assert "keyvault seal create-key" in message


def test_an_extractable_key_is_refused(softhsm: SoftHsm) -> None:
    label = "extractable-key"
    token = pkcs11.lib(str(softhsm.module)).get_token(token_label=softhsm.token_label)
    with token.open(user_pin=softhsm.pin, rw=True) as session:
        session.generate_key(
            pkcs11.KeyType.AES,
            256,
            label=label,
            store=True,
            template={pkcs11.Attribute.SENSITIVE: False, pkcs11.Attribute.EXTRACTABLE: True},
        )
    assert "must be AES-256, sensitive and not extractable" in _refusal(softhsm.config(label))


def test_missing_pkcs11_settings_are_named(softhsm: SoftHsm, database_url: str) -> None:
    settings = softhsm.settings(database_url, "any", pkcs11_library=None, pkcs11_pin=None)
    with pytest.raises(SealError) as raised:
        open_hsm_seal(settings)
    assert str(raised.value) == (
        "the pkcs11 seal needs KEYVAULT_PKCS11_LIBRARY, KEYVAULT_PKCS11_PIN "
        "(or KEYVAULT_PKCS11_PIN_FILE); nothing was written"
    )


def test_the_pin_is_in_no_repr(softhsm: SoftHsm, hsm_key: str, database_url: str) -> None:
    config = softhsm.config(hsm_key)
    seal = Pkcs11Seal.open(config)
    try:
        shown = [
            repr(config),
            repr(seal),
            seal.describe(),
            repr(softhsm.settings(database_url, hsm_key)),
        ]
    finally:
        seal.close()
    assert all(softhsm.pin not in text for text in shown)
    assert seal.describe() == f"pkcs11 (token {softhsm.token_label!r}, key {hsm_key!r})"


def test_the_pin_can_come_from_a_file(
    softhsm: SoftHsm,
    hsm_key: str,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pin_file = tmp_path / "pkcs11_pin"
    pin_file.write_text(softhsm.pin + "\n")
    monkeypatch.delenv("KEYVAULT_PKCS11_PIN", raising=False)
    monkeypatch.setenv("KEYVAULT_PKCS11_PIN_FILE", str(pin_file))
    settings = make_settings(
        database_url,
        MASTER_ENCRYPTION_KEY=None,
        seal="pkcs11",
        pkcs11_library=softhsm.module,
        pkcs11_token_label=softhsm.token_label,
        pkcs11_key_label=hsm_key,
    )

    seal = open_hsm_seal(settings)
    seal.close()
    assert settings.pkcs11_pin is not None
    assert settings.pkcs11_pin.get_secret_value() == softhsm.pin
