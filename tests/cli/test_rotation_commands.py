"""`keyvault rotate` and `keyvault keys status` as real processes, including one killed mid-run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import func, select

from keyvault.crypto.records import new_deployment_salt
from keyvault.db.engine import session_scope
from keyvault.db.migrations import alembic_config
from keyvault.db.models import ApiKeyRecord
from keyvault.master_keys import repository
from keyvault.master_keys.unlock import unlock
from tests.conftest import JWT_SECRET
from tests.deployments import (
    CHEAP_ITERATIONS,
    NEW_KEY,
    OLD_KEY,
    OTHER_KEY,
    api_key_of,
    create_deployment,
    database_contents,
    key_id_of,
    keyring_for,
    open_all,
    open_sessions,
    store_records,
)

KILL_TEST_RECORDS = 3_000
KILL_TEST_BATCH = 5
DEADLINE_SECONDS = 60


def _environment(database_url: str, *, previous: str | None = OLD_KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYVAULT_", "MASTER_"))}
    env.update(
        KEYVAULT_DATABASE_URL=database_url,
        KEYVAULT_JWT_SECRET=JWT_SECRET,
        MASTER_ENCRYPTION_KEY=NEW_KEY,
    )
    if previous is not None:
        env["MASTER_ENCRYPTION_KEY_PREVIOUS"] = previous
    return env


def _keyvault(
    database_url: str, cwd: Path, *args: str, previous: str | None = OLD_KEY
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyvault", *args],
        env=_environment(database_url, previous=previous),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )


async def _records_under(database_url: str, key_id: str) -> int:
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        statement = select(func.count()).where(ApiKeyRecord.key_id == key_id)
        return int((await session.execute(statement)).scalar_one())


async def _prepare(database_url: str, subs: list[str]) -> str:
    """Records under OLD_KEY; returns NEW_KEY's key id."""
    await create_deployment(database_url, OLD_KEY)
    await store_records(database_url, await keyring_for(database_url, OLD_KEY), subs)
    return (await keyring_for(database_url, NEW_KEY, OLD_KEY)).current.key_id


async def test_rotate_killed_mid_run_finishes_when_run_again(
    empty_database_url: str, tmp_path: Path
) -> None:
    subs = [f"user-{n:05d}" for n in range(KILL_TEST_RECORDS)]
    new_id = await _prepare(empty_database_url, subs)
    process = subprocess.Popen(
        [sys.executable, "-m", "keyvault", "rotate", "--batch-size", str(KILL_TEST_BATCH)],
        env=_environment(empty_database_url),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while await _records_under(empty_database_url, new_id) == 0:
            assert process.poll() is None, "rotate ended before it could be killed"
            assert time.monotonic() < deadline, "rotate made no progress"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    done_when_killed = await _records_under(empty_database_url, new_id)
    assert 0 < done_when_killed < KILL_TEST_RECORDS

    rerun = _keyvault(empty_database_url, tmp_path, "rotate")

    assert rerun.returncode == 0, rerun.stderr
    assert "MASTER_ENCRYPTION_KEY_PREVIOUS may be removed" in rerun.stdout
    new_only = await keyring_for(empty_database_url, NEW_KEY)
    assert await open_all(empty_database_url, new_only) == {sub: api_key_of(sub) for sub in subs}


async def test_two_rotate_processes_at_once_rewrap_every_record_once(
    empty_database_url: str, tmp_path: Path
) -> None:
    subs = [f"user-{n:05d}" for n in range(KILL_TEST_RECORDS)]
    await _prepare(empty_database_url, subs)
    command = [sys.executable, "-m", "keyvault", "rotate", "--batch-size", str(KILL_TEST_BATCH)]
    processes = [
        subprocess.Popen(
            command,
            env=_environment(empty_database_url),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=DEADLINE_SECONDS) for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    rewrapped = [int(stdout.split()[1]) for stdout, _ in outputs]
    assert sum(rewrapped) == KILL_TEST_RECORDS
    new_only = await keyring_for(empty_database_url, NEW_KEY)
    assert await open_all(empty_database_url, new_only) == {sub: api_key_of(sub) for sub in subs}


async def test_rotate_ends_with_one_summary_line(empty_database_url: str, tmp_path: Path) -> None:
    await _prepare(empty_database_url, ["alice", "bob"])
    result = _keyvault(empty_database_url, tmp_path, "rotate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "rewrapped 2 records; no record needs a previous key: "
        "MASTER_ENCRYPTION_KEY_PREVIOUS may be removed"
    ]


async def test_rotate_dry_run_says_the_previous_key_is_still_needed(
    empty_database_url: str, tmp_path: Path
) -> None:
    await _prepare(empty_database_url, ["alice", "bob"])
    old_id = await key_id_of(empty_database_url, OLD_KEY)
    result = _keyvault(empty_database_url, tmp_path, "rotate", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "dry run: 2 records would be rewrapped; nothing was written; "
        f"still needed: previous key #1 (id {old_id}) by 2 records"
    )
    assert await _records_under(empty_database_url, old_id) == 2


async def test_rotate_with_an_unknown_key_fails_in_one_line_without_the_key(
    empty_database_url: str, tmp_path: Path
) -> None:
    await _prepare(empty_database_url, ["alice"])
    canary = "canary-unknown-master-key-0123456789abcdef"
    result = _keyvault(empty_database_url, tmp_path, "rotate", previous=canary)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "previous master key #1" in result.stderr
    assert canary not in result.stderr + result.stdout


async def test_keys_status_lists_records_per_key_and_unneeded_keys(
    empty_database_url: str, tmp_path: Path
) -> None:
    new_id = await _prepare(empty_database_url, ["alice", "bob", "carol"])
    old_id = await key_id_of(empty_database_url, OLD_KEY)

    before = _keyvault(empty_database_url, tmp_path, "keys", "status")
    _keyvault(empty_database_url, tmp_path, "rotate")
    after = _keyvault(empty_database_url, tmp_path, "keys", "status")

    assert before.returncode == 0, before.stderr
    assert f"{old_id}  v3               3  previous #1" in before.stdout
    assert "no longer needed" not in before.stdout
    assert f"{new_id}  v3               3  current" in after.stdout
    assert f"previous key #1 (id {old_id}) is no longer needed" in after.stdout


async def test_keys_status_flags_records_under_an_unconfigured_key(
    empty_database_url: str, tmp_path: Path
) -> None:
    await _prepare(empty_database_url, ["alice"])
    old_id = await key_id_of(empty_database_url, OLD_KEY)
    result = _keyvault(empty_database_url, tmp_path, "keys", "status", previous=None)
    assert result.returncode == 1
    assert f"{old_id}  v3               1  NOT CONFIGURED" in result.stdout


def _assert_refused_without_keys(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("keyvault: ")
    assert expected in result.stderr
    assert all(key not in result.stderr + result.stdout for key in (OLD_KEY, NEW_KEY, OTHER_KEY))


@pytest.mark.parametrize(
    "arguments",
    [("migrate",), ("serve", "--port", "1"), ("rotate",), ("keys", "status")],
    ids=lambda arguments: arguments[0],
)
async def test_a_retired_previous_key_cannot_make_a_new_key_active(
    empty_database_url: str, tmp_path: Path, arguments: tuple[str, ...]
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    await store_records(empty_database_url, await keyring_for(empty_database_url, OLD_KEY), ["a"])
    await keyring_for(empty_database_url, OTHER_KEY, OLD_KEY)
    before = await database_contents(empty_database_url)

    result = _keyvault(empty_database_url, tmp_path, *arguments, previous=OLD_KEY)

    _assert_refused_without_keys(result, "active master key")
    assert await database_contents(empty_database_url) == before
    assert (await keyring_for(empty_database_url, OTHER_KEY)).previous == ()


async def test_migrate_refuses_an_unproven_rotation_before_upgrading_the_schema(
    empty_database_url: str, tmp_path: Path
) -> None:
    """A schema that knows retirement but is not at head yet: the check runs before the upgrade."""
    await asyncio.to_thread(command.upgrade, alembic_config(empty_database_url), "0003")
    async with open_sessions(empty_database_url) as sessions:
        async with session_scope(sessions) as session:
            await repository.create_deployment(
                session, new_deployment_salt(), CHEAP_ITERATIONS, datetime.now(UTC)
            )
        for master_key, previous in [(OLD_KEY, ()), (OTHER_KEY, (OLD_KEY,))]:
            await unlock(
                sessions, master_key, iterations_for_new=CHEAP_ITERATIONS, previous=previous
            )
    before = await database_contents(empty_database_url)

    result = _keyvault(empty_database_url, tmp_path, "migrate", previous=OLD_KEY)

    _assert_refused_without_keys(result, "active master key")
    assert await database_contents(empty_database_url) == before
