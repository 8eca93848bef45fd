"""Running `keyvault` as a real process under the pkcs11 seal (SoftHSM2), with canary checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import JWT_SECRET
from tests.deployments import OLD_KEY
from tests.softhsm import SO_PIN, SoftHsm

DEADLINE_SECONDS = 60


def seal_environment(
    database_url: str, softhsm: SoftHsm, key_label: str, *, master_key: str | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYVAULT_", "MASTER_"))}
    env.update(KEYVAULT_DATABASE_URL=database_url, KEYVAULT_JWT_SECRET=JWT_SECRET)
    env.update(softhsm.environment(key_label))
    if master_key is not None:
        env["MASTER_ENCRYPTION_KEY"] = master_key
    return env


def keyvault(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = DEADLINE_SECONDS
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "keyvault", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert_no_secret(result.stdout + result.stderr, env)
    return result


def assert_no_secret(output: str, env: dict[str, str]) -> None:
    """Neither the PIN nor the master key, whichever this run was given, ever shows."""
    secrets = [env.get("KEYVAULT_PKCS11_PIN"), env.get("MASTER_ENCRYPTION_KEY"), SO_PIN, OLD_KEY]
    for secret in filter(None, secrets):
        assert secret not in output


def one_line_refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keyvault: ")
    return lines[0]
