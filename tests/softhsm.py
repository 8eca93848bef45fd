"""A real PKCS#11 token for the pkcs11 seal's tests: SoftHSM2, with its own configuration and
token directory per test session (`softhsm2-util --init-token`), never the machine's tokens.

SoftHSM2 sees only the tokens that exist when a process loads the module, so the session fixture
makes every token before any test loads it; each test then makes a wrapping key of its own, with
a label of its own, in that token.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keyvault.config import Settings
from keyvault.crypto.records import Keyring
from keyvault.master_keys import pkcs11_seal
from keyvault.master_keys.keyring import open_keyring
from tests.conftest import make_settings
from tests.deployments import open_sessions

# Where Debian's softhsm2 puts the module; KEYVAULT_TEST_PKCS11_LIBRARY names another.
MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
TOKEN_LABEL = "keyvault-test"
# Canaries: a test fails if either ever shows up in output, a log line or an error.
USER_PIN = "pin-canary-5a1f0c93"
SO_PIN = "so-pin-canary-8d24e7b1"


def softhsm_module() -> Path | None:
    given = os.environ.get("KEYVAULT_TEST_PKCS11_LIBRARY")
    candidates = (given,) if given else MODULE_PATHS
    return next((Path(path) for path in candidates if path and Path(path).is_file()), None)


# CI installs softhsm2 (.ci/run), so there a missing token is a failure, never a skip.
def require_softhsm() -> tuple[Path, str]:
    module, util = softhsm_module(), shutil.which("softhsm2-util")
    if module is None or util is None:
        if os.environ.get("CI"):
            pytest.fail("softhsm2 is not installed (.ci/run installs it)")
        pytest.skip("softhsm2 is not installed (apt-get install softhsm2)")
    return module, util


@dataclass(frozen=True)
class SoftHsm:
    module: Path
    token_label: str
    pin: str

    def environment(self, key_label: str) -> dict[str, str]:
        """The pkcs11 seal's settings as a process gets them (SOFTHSM2_CONF is inherited)."""
        return {
            "KEYVAULT_SEAL": "pkcs11",
            "KEYVAULT_PKCS11_LIBRARY": str(self.module),
            "KEYVAULT_PKCS11_TOKEN_LABEL": self.token_label,
            "KEYVAULT_PKCS11_PIN": self.pin,
            "KEYVAULT_PKCS11_KEY_LABEL": key_label,
        }

    def settings(self, database_url: str, key_label: str, **overrides: Any) -> Settings:
        """Test settings under the pkcs11 seal; no master key unless `overrides` gives one."""
        values: dict[str, Any] = {
            "MASTER_ENCRYPTION_KEY": None,
            "seal": "pkcs11",
            "pkcs11_library": self.module,
            "pkcs11_token_label": self.token_label,
            "pkcs11_pin": self.pin,
            "pkcs11_key_label": key_label,
        }
        return make_settings(database_url, **(values | overrides))

    def config(self, key_label: str) -> pkcs11_seal.Pkcs11Settings:
        return pkcs11_seal.Pkcs11Settings(self.module, self.token_label, self.pin, key_label)

    def new_key(self) -> str:
        """A fresh wrapping key in the token, made as `keyvault seal create-key` makes it."""
        label = f"seal-{uuid.uuid4().hex[:12]}"
        pkcs11_seal.create_key(self.config(label))
        return label


def start_softhsm(directory: Path) -> SoftHsm:
    module, util = require_softhsm()
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            TOKEN_LABEL,
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return SoftHsm(module, TOKEN_LABEL, USER_PIN)


async def keyring_of(settings: Settings) -> Keyring:
    """The keyring as the service opens it at start, under the seal `settings` choose."""
    async with open_sessions(settings.database_url.get_secret_value()) as sessions:
        return await open_keyring(sessions, settings)
