"""The pkcs11 seal: root keys wrapped by an AES-256 key that never leaves a PKCS#11 token.

The token runs the AES-GCM of crypto.keyring's wrapped format itself (CKM_AES_GCM with a fresh
nonce from this process); keyvault never sees the wrapping key. `create_key` makes that key as a
token object that is sensitive and never extractable, and `Pkcs11Seal.open` refuses any other.

python-pkcs11 is the optional extra `keyvault[pkcs11]`, imported only here. Every failure is a
SealError naming the setting at fault; none of them carries the PIN.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from keyvault.config import Settings
from keyvault.crypto.keyring import (
    KeyPurpose,
    UnwrapError,
    decode_wrapped,
    encode_wrapped,
    wrap_context,
)
from keyvault.crypto.records import NONCE_BYTES
from keyvault.master_keys.seals import SealError, SealKind

WRAPPING_KEY_BITS = 256


@dataclass(frozen=True, slots=True)
class Pkcs11Settings:
    library: Path
    token_label: str
    pin: str = field(repr=False)
    key_label: str
    # The setting that named the key, for messages: the current key's, or the previous one's.
    key_setting: str = "KEYVAULT_PKCS11_KEY_LABEL"

    @classmethod
    def from_settings(cls, settings: Settings) -> Pkcs11Settings:
        library, token_label = settings.pkcs11_library, settings.pkcs11_token_label
        pin = settings.pkcs11_pin.get_secret_value() if settings.pkcs11_pin is not None else ""
        if library is None or not token_label or not pin:
            missing = [
                name
                for name, given in (
                    ("KEYVAULT_PKCS11_LIBRARY", library is not None),
                    ("KEYVAULT_PKCS11_TOKEN_LABEL", bool(token_label)),
                    ("KEYVAULT_PKCS11_PIN (or KEYVAULT_PKCS11_PIN_FILE)", bool(pin)),
                )
                if not given
            ]
            raise SealError(f"the pkcs11 seal needs {', '.join(missing)}; nothing was written")
        return cls(library, token_label, pin, settings.pkcs11_key_label)

    def describe(self) -> str:
        return f"pkcs11 (token {self.token_label!r}, key {self.key_label!r})"


class Pkcs11Seal:
    """The wrapping key, through a logged-in session on the token; `close` lets go of both."""

    kind = SealKind.pkcs11

    def __init__(self, config: Pkcs11Settings, session: Any, key: Any) -> None:
        # Both None once closed: the key handle is valid only while the session is.
        self._config = config
        self._session = session
        self._key = key

    def __repr__(self) -> str:
        return f"Pkcs11Seal({self._config.describe()})"

    @classmethod
    def open(cls, config: Pkcs11Settings) -> Pkcs11Seal:
        pkcs11 = _library_module()
        session = _shared_login(pkcs11, config)
        try:
            key = _wrapping_key(pkcs11, session, config)
        except BaseException:
            _release(config)
            raise
        return cls(config, session, key)

    def describe(self) -> str:
        return self._config.describe()

    def wrap(self, material: bytes, purpose: KeyPurpose = KeyPurpose.root) -> bytes:
        pkcs11 = _library_module()
        nonce = os.urandom(NONCE_BYTES)
        try:
            sealed = self._key.encrypt(material, **_gcm(pkcs11, nonce, purpose))
        except pkcs11.PKCS11Error as error:
            raise SealError(
                f"{self.describe()} refused to wrap a root key ({type(error).__name__}); "
                "nothing was written"
            ) from None
        return encode_wrapped(nonce, bytes(sealed))

    def unwrap(self, wrapped: bytes, purpose: KeyPurpose = KeyPurpose.root) -> bytes:
        pkcs11 = _library_module()
        nonce, sealed = decode_wrapped(wrapped)
        try:
            return bytes(self._key.decrypt(sealed, **_gcm(pkcs11, nonce, purpose)))
        except pkcs11.PKCS11Error:
            # Tokens differ in which error a failed tag check raises; all of them mean this.
            raise UnwrapError() from None

    def close(self) -> None:
        if self._session is not None:
            self._session = self._key = None
            _release(self._config)


@dataclass(slots=True)
class _Login:
    session: Any
    pin_digest: bytes = field(repr=False)
    users: int = 1


# A PKCS#11 login belongs to the whole process, and closing the session that made it logs every
# other session out: seals open at the same time in one process share one logged-in session.
_logins: dict[tuple[str, str], _Login] = {}


def _shared_login(pkcs11: ModuleType, config: Pkcs11Settings) -> Any:
    name = (str(config.library), config.token_label)
    digest = hashlib.sha256(config.pin.encode("utf-8")).digest()
    login = _logins.get(name)
    if login is None:
        _logins[name] = _Login(_log_in(pkcs11, config, read_write=False), digest)
        return _logins[name].session
    if not hmac.compare_digest(login.pin_digest, digest):
        raise _wrong_pin(config)
    login.users += 1
    return login.session


def _release(config: Pkcs11Settings) -> None:
    name = (str(config.library), config.token_label)
    login = _logins[name]
    login.users -= 1
    if login.users == 0:
        del _logins[name]
        login.session.close()


def open_hsm_seal(settings: Settings) -> Pkcs11Seal:
    """The pkcs11 seal of these settings, logged in and holding its key; SealError otherwise."""
    return Pkcs11Seal.open(Pkcs11Settings.from_settings(settings))


def open_previous_hsm_seal(settings: Settings) -> Pkcs11Seal | None:
    """The seal of KEYVAULT_PKCS11_KEY_LABEL_PREVIOUS, the HSM key being replaced; None if unset."""
    label = settings.pkcs11_key_label_previous
    if not label or label == settings.pkcs11_key_label:
        return None
    config = Pkcs11Settings.from_settings(settings)
    previous = replace(config, key_label=label, key_setting="KEYVAULT_PKCS11_KEY_LABEL_PREVIOUS")
    return Pkcs11Seal.open(previous)


def create_key(config: Pkcs11Settings) -> None:
    """Generate the wrapping key in the token: AES-256, sensitive, never extractable."""
    pkcs11 = _library_module()
    session = _log_in(pkcs11, config, read_write=True)
    try:
        existing = list(session.get_objects({pkcs11.Attribute.LABEL: config.key_label}))
        if existing:
            raise SealError(
                f"token {config.token_label!r} already holds an object labelled "
                f"{config.key_label!r} (KEYVAULT_PKCS11_KEY_LABEL); nothing was written"
            )
        attribute = pkcs11.Attribute
        session.generate_key(
            pkcs11.KeyType.AES,
            WRAPPING_KEY_BITS,
            label=config.key_label,
            store=True,
            template={
                attribute.TOKEN: True,
                attribute.PRIVATE: True,
                attribute.SENSITIVE: True,
                attribute.EXTRACTABLE: False,
                attribute.ENCRYPT: True,
                attribute.DECRYPT: True,
            },
        )
    except pkcs11.PKCS11Error as error:
        raise SealError(
            f"token {config.token_label!r} refused to create the key ({type(error).__name__}); "
            "nothing was written"
        ) from None
    finally:
        session.close()


def _library_module() -> ModuleType:
    try:
        import pkcs11
    except ImportError:
        raise SealError(
            "KEYVAULT_SEAL=pkcs11 needs python-pkcs11: install keyvault[pkcs11]"
        ) from None
    return pkcs11


def _log_in(pkcs11: ModuleType, config: Pkcs11Settings, *, read_write: bool) -> Any:
    if not config.library.is_file():
        raise SealError(
            f"KEYVAULT_PKCS11_LIBRARY {config.library} is not a file; nothing was written"
        )
    try:
        library = pkcs11.lib(str(config.library))
    except pkcs11.PKCS11Error:
        raise SealError(
            f"KEYVAULT_PKCS11_LIBRARY {config.library} cannot be loaded as a PKCS#11 module; "
            "nothing was written"
        ) from None
    token_name = f"token {config.token_label!r} (KEYVAULT_PKCS11_TOKEN_LABEL)"
    try:
        token = library.get_token(token_label=config.token_label)
    except pkcs11.NoSuchToken:
        raise SealError(f"no PKCS#11 {token_name} is present; nothing was written") from None
    except pkcs11.MultipleTokensReturned:
        raise SealError(f"more than one {token_name} is present; nothing was written") from None
    try:
        return token.open(user_pin=config.pin, rw=read_write)
    except pkcs11.UserAlreadyLoggedIn:
        # A login holds for the whole process: another seal of this process is open meanwhile.
        return token.open(rw=read_write)
    except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
        raise _wrong_pin(config) from None
    except pkcs11.PinLocked:
        raise SealError(
            f"the user PIN of {token_name} is locked (too many wrong PINs); the token's security "
            "officer must unlock it; nothing was written"
        ) from None
    except pkcs11.PKCS11Error as error:
        raise SealError(
            f"{token_name} refused the login ({type(error).__name__}); nothing was written"
        ) from None


def _wrong_pin(config: Pkcs11Settings) -> SealError:
    return SealError(
        f"the PIN (KEYVAULT_PKCS11_PIN) is wrong for token {config.token_label!r} "
        "(KEYVAULT_PKCS11_TOKEN_LABEL); nothing was written"
    )


def _wrapping_key(pkcs11: ModuleType, session: Any, config: Pkcs11Settings) -> Any:
    name = f"key {config.key_label!r} ({config.key_setting}) in token {config.token_label!r}"
    try:
        key = session.get_key(
            object_class=pkcs11.ObjectClass.SECRET_KEY,
            key_type=pkcs11.KeyType.AES,
            label=config.key_label,
        )
    except pkcs11.NoSuchKey:
        raise SealError(
            f"there is no AES {name}; create it with `keyvault seal create-key`; "
            "nothing was written"
        ) from None
    except pkcs11.MultipleObjectsReturned:
        raise SealError(f"there is more than one {name}; nothing was written") from None
    attribute = pkcs11.Attribute
    if (
        key.key_length != WRAPPING_KEY_BITS
        or not key[attribute.SENSITIVE]
        or key[attribute.EXTRACTABLE]
    ):
        raise SealError(
            f"the {name} must be AES-256, sensitive and not extractable "
            "(as `keyvault seal create-key` makes it); nothing was written"
        )
    return key


def _gcm(pkcs11: ModuleType, nonce: bytes, purpose: KeyPurpose) -> dict[str, Any]:
    params = pkcs11.mechanisms.GCMParams(nonce, wrap_context(SealKind.pkcs11, purpose))
    return {"mechanism": pkcs11.Mechanism.AES_GCM, "mechanism_param": params}
