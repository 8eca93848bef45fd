"""`keyvault seal create-key`, `seal migrate` and `seal status` as real processes against SoftHSM2,
on both databases: a move killed with SIGKILL and run again, and every refusal of every command
(one line on stderr, exit 1, nothing written, no PIN)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import func, select

from keyvault.db.engine import session_scope
from keyvault.db.migrations import alembic_config
from keyvault.db.models import ApiKeyRecord
from tests.cli.seal_support import keyvault, one_line_refusal, seal_environment
from tests.deployments import (
    OLD_KEY,
    api_key_of,
    create_deployment,
    database_contents,
    key_id_of,
    keyring_for,
    open_all,
    open_sessions,
    store_records,
)
from tests.softhsm import SoftHsm, keyring_of

KILL_TEST_RECORDS = 3_000
KILL_TEST_BATCH = 5
DEADLINE_SECONDS = 60


async def _records_not_under(database_url: str, key_id: str) -> int:
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        statement = select(func.count()).where(ApiKeyRecord.key_id != key_id)
        return int((await session.execute(statement)).scalar_one())


def test_create_key_makes_the_key_once_and_refuses_a_second(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    env = seal_environment("sqlite+aiosqlite:///unused.db", softhsm, "made-by-the-cli")

    made = keyvault(env, tmp_path, "seal", "create-key")
    again = keyvault(env, tmp_path, "seal", "create-key")

    assert made.returncode == 0, made.stderr
    assert made.stdout == (
        f"created the wrapping key: pkcs11 (token {softhsm.token_label!r}, key 'made-by-the-cli'), "
        "AES-256, not extractable\n"
    )
    assert "already holds an object labelled 'made-by-the-cli'" in one_line_refusal(again)


async def test_seal_migrate_killed_mid_run_finishes_when_run_again(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str, tmp_path: Path
) -> None:
    subs = [f"user-{n:05d}" for n in range(KILL_TEST_RECORDS)]
    await create_deployment(empty_database_url, OLD_KEY)
    await store_records(empty_database_url, await keyring_for(empty_database_url, OLD_KEY), subs)
    env_key_id = await key_id_of(empty_database_url, OLD_KEY)
    env = seal_environment(empty_database_url, softhsm, hsm_key, master_key=OLD_KEY)
    arguments = ["seal", "migrate", "--to", "pkcs11", "--batch-size", str(KILL_TEST_BATCH)]
    process = subprocess.Popen(
        [sys.executable, "-m", "keyvault", *arguments],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while await _records_not_under(empty_database_url, env_key_id) == 0:
            assert process.poll() is None, "seal migrate ended before it could be killed"
            assert time.monotonic() < deadline, "seal migrate made no progress"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    moved_when_killed = await _records_not_under(empty_database_url, env_key_id)
    assert 0 < moved_when_killed < KILL_TEST_RECORDS

    rerun = keyvault(env, tmp_path, "seal", "migrate", "--to", "pkcs11")

    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.splitlines() == [
        f"rewrapped {KILL_TEST_RECORDS - moved_when_killed} records onto root key "
        f"{(await keyring_of(softhsm.settings(empty_database_url, hsm_key))).current.key_id}; "
        f"removed the root keys derived from the master key ({env_key_id}): "
        "MASTER_ENCRYPTION_KEY alone opens nothing now and may be removed from the configuration"
    ]
    hsm_only = await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    assert await open_all(empty_database_url, hsm_only) == {sub: api_key_of(sub) for sub in subs}

    status = keyvault(
        seal_environment(empty_database_url, softhsm, hsm_key), tmp_path, "seal", "status"
    )
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == f"seal: pkcs11 (token {softhsm.token_label!r}, key {hsm_key!r})"
    assert lines[1].startswith("root-key rotation: every 90 days")
    assert lines[2].startswith("to rewrap: 0 records not under the active root key")
    assert lines[3] == "recovery kit: none (`keyvault seal recovery-kit` makes one)"
    assert lines[4].split() == ["key", "id", "seal", "created", "records", "state"]
    removed, row = lines[5:]
    assert removed.split()[0:2] == [env_key_id, "pkcs11"]
    assert removed.endswith("0  removed (only its audit key is kept, to check old audit events)")
    assert row.split()[0:2] == [hsm_only.current.key_id, "pkcs11"]
    assert row.split()[3:] == [str(KILL_TEST_RECORDS), "active"]
    env_alone = {k: v for k, v in env.items() if not k.startswith("KEYVAULT_PKCS11")}
    env_alone["KEYVAULT_SEAL"] = "env"
    assert "MASTER_ENCRYPTION_KEY alone opens nothing" in one_line_refusal(
        keyvault(env_alone, tmp_path, "keys", "status")
    )


async def test_seal_status_lists_the_env_entries_during_the_move(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str, tmp_path: Path
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    await store_records(empty_database_url, await keyring_for(empty_database_url, OLD_KEY), ["a"])
    env_key_id = await key_id_of(empty_database_url, OLD_KEY)
    both = seal_environment(empty_database_url, softhsm, hsm_key, master_key=OLD_KEY)

    with_key = keyvault(both, tmp_path, "seal", "status")
    without = keyvault(
        seal_environment(empty_database_url, softhsm, hsm_key), tmp_path, "seal", "status"
    )

    assert with_key.returncode == 0, with_key.stderr
    rows = {line.split()[0]: line for line in with_key.stdout.splitlines()[5:]}
    assert rows[env_key_id].split()[1] == "env"
    assert rows[env_key_id].endswith("1  retired")
    assert without.returncode == 1
    assert "retired, not opened (needs MASTER_ENCRYPTION_KEY)" in without.stdout


def test_migrate_command_under_the_hsm_creates_a_new_deployment(
    softhsm: SoftHsm, hsm_key: str, tmp_path: Path
) -> None:
    env = seal_environment(f"sqlite+aiosqlite:///{tmp_path / 'new.db'}", softhsm, hsm_key)
    result = keyvault(env, tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "database is at the latest schema; keyring opened by the pkcs11 seal\n"


async def test_migrate_command_refuses_an_env_database_without_the_master_key_before_upgrading(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str, tmp_path: Path
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    await asyncio.to_thread(command.downgrade, alembic_config(empty_database_url), "0004")
    before = await database_contents(empty_database_url)

    refused = keyvault(seal_environment(empty_database_url, softhsm, hsm_key), tmp_path, "migrate")

    assert "sealed by the env seal" in one_line_refusal(refused)
    assert await database_contents(empty_database_url) == before


@pytest.fixture
async def hsm_deployment(softhsm: SoftHsm, hsm_key: str, empty_database_url: str) -> str:
    """A database under the pkcs11 seal with one record; its wrapping key is `hsm_key`."""
    await asyncio.to_thread(_upgrade, empty_database_url)
    keyring = await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    await store_records(empty_database_url, keyring, ["alice"])
    return empty_database_url


def _upgrade(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


REFUSALS = {
    "missing module": ({"KEYVAULT_PKCS11_LIBRARY": "/nonexistent/libpkcs11.so"}, "is not a file"),
    "not a module": ({"KEYVAULT_PKCS11_LIBRARY": "/etc/hostname"}, "cannot be loaded"),
    "no such token": ({"KEYVAULT_PKCS11_TOKEN_LABEL": "no-such-token"}, "no PKCS#11 token"),
    "wrong PIN": ({"KEYVAULT_PKCS11_PIN": "wrong-pin-canary-3c1d"}, "the PIN"),
    "no such key": ({"KEYVAULT_PKCS11_KEY_LABEL": "no-such-key"}, "there is no AES key"),
    "another key": ({"KEYVAULT_PKCS11_KEY_LABEL": "<another key>"}, "does not unwrap"),
}


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
async def test_the_service_and_migrate_refuse_to_start_on_a_bad_seal(
    refusal: str, softhsm: SoftHsm, hsm_key: str, hsm_deployment: str, tmp_path: Path
) -> None:
    changes, expected = REFUSALS[refusal]
    if changes.get("KEYVAULT_PKCS11_KEY_LABEL") == "<another key>":
        changes = {"KEYVAULT_PKCS11_KEY_LABEL": softhsm.new_key()}
    env = seal_environment(hsm_deployment, softhsm, hsm_key) | changes
    before = await database_contents(hsm_deployment)

    for args in (["serve", "--port", "1"], ["migrate"]):
        assert expected in one_line_refusal(keyvault(env, tmp_path, *args)), args

    assert await database_contents(hsm_deployment) == before


EVERY_COMMAND = [
    ["serve", "--port", "1"],
    ["migrate"],
    ["rotate"],
    ["keys", "status"],
    ["audit", "verify"],
    ["seal", "status"],
    ["seal", "migrate", "--to", "pkcs11"],
    ["import-seed", "--from", "sqlite:///nonexistent-seed.db", "--master-key-env", "SEED_KEY"],
]


async def test_every_command_refuses_a_wrong_pin_in_one_line(
    softhsm: SoftHsm, hsm_key: str, hsm_deployment: str, tmp_path: Path
) -> None:
    env = seal_environment(hsm_deployment, softhsm, hsm_key, master_key=OLD_KEY)
    env |= {"KEYVAULT_PKCS11_PIN": "wrong-pin-canary-77e0", "SEED_KEY": OLD_KEY}
    before = await database_contents(hsm_deployment)

    for args in EVERY_COMMAND:
        assert "the PIN (KEYVAULT_PKCS11_PIN) is wrong" in one_line_refusal(
            keyvault(env, tmp_path, *args)
        ), args

    assert await database_contents(hsm_deployment) == before


async def test_rotate_and_keys_status_work_on_the_keyring_during_the_move(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str, tmp_path: Path
) -> None:
    """`keyvault rotate` under the pkcs11 seal rewraps onto the HSM's key; the env key stays."""
    await create_deployment(empty_database_url, OLD_KEY)
    await store_records(empty_database_url, await keyring_for(empty_database_url, OLD_KEY), ["a"])
    env = seal_environment(empty_database_url, softhsm, hsm_key, master_key=OLD_KEY)

    rotated = keyvault(env, tmp_path, "rotate")
    status = keyvault(
        seal_environment(empty_database_url, softhsm, hsm_key), tmp_path, "keys", "status"
    )

    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith("rewrapped 1 records")
    assert status.returncode == 0, status.stderr
    hsm_only = await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    (row,) = [
        line for line in status.stdout.splitlines() if line.startswith(hsm_only.current.key_id)
    ]
    assert row.split()[1:] == ["v3", "1", "current"]
    assert await open_all(empty_database_url, hsm_only) == {"a": api_key_of("a")}


def test_the_base_install_needs_no_python_pkcs11(
    softhsm: SoftHsm, hsm_key: str, tmp_path: Path
) -> None:
    """python-pkcs11 is imported only for the pkcs11 seal; without the extra that seal says so."""
    env = seal_environment(f"sqlite+aiosqlite:///{tmp_path / 'kv.db'}", softhsm, hsm_key)
    without_extra = (
        "import sys; sys.modules['pkcs11'] = None; sys.argv[0] = 'keyvault'; "
        "from keyvault.cli.app import app; app()"
    )
    env_seal = {k: v for k, v in env.items() if not k.startswith("KEYVAULT_PKCS11")}
    env_seal |= {"KEYVAULT_SEAL": "env", "MASTER_ENCRYPTION_KEY": OLD_KEY}

    under_env = subprocess.run(
        [sys.executable, "-c", without_extra, "migrate"],
        env=env_seal,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
    )
    under_hsm = subprocess.run(
        [sys.executable, "-c", without_extra, "seal", "status"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
    )

    assert under_env.returncode == 0, under_env.stderr
    assert under_hsm.returncode == 1
    assert under_hsm.stderr == (
        "keyvault: KEYVAULT_SEAL=pkcs11 needs python-pkcs11: install keyvault[pkcs11]\n"
    )
