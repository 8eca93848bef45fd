"""`keyvault import-seed` as a real process: master key from a file or variable, counts, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keyvault.db.migrations import upgrade_to_head
from tests.cli.seal_support import keyvault, seal_environment
from tests.cli.test_rotation_commands import _keyvault
from tests.deployments import NEW_KEY, create_deployment, keyring_for, open_all
from tests.seed_databases import (
    FAST_ITERATIONS,
    SEED_MASTER_KEY,
    SeedUser,
    create_seed_database,
    drop_seed_database,
)
from tests.softhsm import SoftHsm, keyring_of

USERS = [
    SeedUser("alice", "sk-canary-alice-0123456789"),
    SeedUser("bob", None),
    SeedUser("carol", None, token="garbage!", salt=b"0" * 16),
]


@pytest.fixture
async def seed_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    url = await create_seed_database(backend, tmp_path, USERS)
    yield url
    await drop_seed_database(url)


def _import(vault_url: str, cwd: Path, *args: str) -> tuple[int, str, str]:
    result = _keyvault(
        vault_url, cwd, "import-seed", "--iterations", str(FAST_ITERATIONS), *args, previous=None
    )
    return result.returncode, result.stdout, result.stderr


async def test_import_seed_reports_counts_and_failures_by_sub(
    empty_database_url: str, seed_url: str, tmp_path: Path
) -> None:
    await create_deployment(empty_database_url, NEW_KEY)
    key_file = tmp_path / "seed-master-key"
    key_file.write_text(SEED_MASTER_KEY + "\n", encoding="utf-8")

    code, stdout, stderr = _import(
        empty_database_url, tmp_path, "--from", seed_url, "--master-key-file", str(key_file)
    )

    assert code == 1  # one row failed
    assert stdout.strip() == (
        "imported 1, skipped 1 (1 without a key, 0 already in the vault), kept 0, failed 1"
    )
    assert stderr.strip() == "keyvault: 'carol' failed: the token is not URL-safe base64"
    assert "sk-canary" not in stdout + stderr
    assert SEED_MASTER_KEY not in stdout + stderr
    keyring = await keyring_for(empty_database_url, NEW_KEY)
    assert await open_all(empty_database_url, keyring) == {"alice": "sk-canary-alice-0123456789"}


async def test_import_seed_with_the_wrong_master_key_stops_in_one_line(
    empty_database_url: str, seed_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_deployment(empty_database_url, NEW_KEY)
    canary = "canary-wrong-seed-master-key-0000"
    monkeypatch.setenv("SEED_MASTER_KEY_FOR_TEST", canary)

    code, stdout, stderr = _import(
        empty_database_url,
        tmp_path,
        "--from",
        seed_url,
        "--master-key-env",
        "SEED_MASTER_KEY_FOR_TEST",
    )

    assert code == 1
    assert stdout == ""
    assert stderr.count("\n") == 1
    assert "nothing was written" in stderr
    assert canary not in stderr


@pytest.mark.parametrize("options", [[], ["--master-key-env", "X", "--master-key-file", "y"]])
def test_import_seed_needs_exactly_one_master_key_source(
    options: list[str], tmp_path: Path
) -> None:
    code, _, stderr = _import(
        "sqlite+aiosqlite:///unused.db", tmp_path, "--from", "sqlite:///s.db", *options
    )
    assert code == 1
    assert "exactly one of --master-key-env and --master-key-file" in stderr


async def test_import_seed_under_the_hsm_seals_with_its_root_key(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str, seed_url: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    env = seal_environment(empty_database_url, softhsm, hsm_key) | {"SEED_KEY": SEED_MASTER_KEY}

    result = keyvault(
        env,
        tmp_path,
        "import-seed",
        "--iterations",
        str(FAST_ITERATIONS),
        "--from",
        seed_url,
        "--master-key-env",
        "SEED_KEY",
    )

    assert result.stdout.startswith("imported 1,"), result.stderr
    keyring = await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    assert await open_all(empty_database_url, keyring) == {"alice": "sk-canary-alice-0123456789"}
