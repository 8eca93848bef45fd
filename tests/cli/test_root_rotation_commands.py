"""`keyvault keys rotate-root`, the served rewrap, `keyvault seal recovery-kit` and `seal recover`
as real processes on both databases: the rewrap killed with SIGKILL and resumed by the next start,
and a recovery drill through the commands, the shares shown once on stdout and nowhere else."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cli.seal_support import keyvault, one_line_refusal
from tests.conftest import bearer, key_path, mint
from tests.deployments import (
    NEW_KEY,
    OLD_KEY,
    api_key_of,
    create_deployment,
    keyring_for,
    open_all,
    store_records,
)
from tests.master_keys.rotation_support import env_settings, opened, records_by_key_id
from tests.real_server import free_port, server_environment, serving, wait_until_live

pytestmark = pytest.mark.server

RECORDS = 1_500
RATE = 250  # records per second: six seconds of rewrap, time enough to kill it midway
DEADLINE_SECONDS = 90


async def test_a_served_rewrap_killed_with_sigkill_carries_on_after_a_restart(
    empty_database_url: str, tmp_path: Path
) -> None:
    subs = [f"user-{n:05d}" for n in range(RECORDS)]
    await create_deployment(empty_database_url, OLD_KEY)
    await store_records(empty_database_url, await keyring_for(empty_database_url, OLD_KEY), subs)
    env = server_environment(
        empty_database_url, MASTER_ENCRYPTION_KEY=OLD_KEY, KEYVAULT_REWRAP_RATE=str(RATE)
    )

    rotated = keyvault(env, tmp_path, "keys", "rotate-root")

    assert rotated.returncode == 0, rotated.stderr
    new_key_id = rotated.stdout.split()[2]
    assert rotated.stdout == (
        f"root key {new_key_id} is active (it replaces "
        f"{(await keyring_for(empty_database_url, OLD_KEY)).current.key_id}); the running "
        f"service rewraps the {RECORDS} records under older root keys onto it at {RATE} "
        "records/s (KEYVAULT_REWRAP_RATE), or run `keyvault rotate` to do it now\n"
    )
    port = free_port()
    with (tmp_path / "first.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "keyvault", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_live(f"http://127.0.0.1:{port}", process)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while (await records_by_key_id(empty_database_url))[new_key_id] < RECORDS // 5:
            assert process.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the served rewrap made no progress"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    moved_when_killed = (await records_by_key_id(empty_database_url))[new_key_id]
    assert RECORDS // 5 <= moved_when_killed < RECORDS

    token = mint("writer", "api-key:read api-key:write users:any")
    with serving(tmp_path, env) as server:
        put = httpx.put(
            f"{server.base_url}{key_path(subs[-1])}",
            json={"api_key": "sk-written-after-0123456789"},
            headers=bearer(token),
        )
        assert put.status_code == 200, put.text
        deadline = time.monotonic() + DEADLINE_SECONDS
        while (await records_by_key_id(empty_database_url)) != {new_key_id: RECORDS}:
            assert time.monotonic() < deadline, "the rewrap did not carry on after the restart"
            time.sleep(0.2)
        read = httpx.get(f"{server.base_url}{key_path(subs[0])}", headers=bearer(token))
        assert read.json()["api_key"] == api_key_of(subs[0])

    keyring = await opened(env_settings(empty_database_url, OLD_KEY))
    expected = {sub: api_key_of(sub) for sub in subs} | {subs[-1]: "sk-written-after-0123456789"}
    assert await open_all(empty_database_url, keyring) == expected


def _run(
    env: dict[str, str], cwd: Path, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyvault", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )


async def test_a_recovery_drill_through_the_commands(
    empty_database_url: str, tmp_path: Path
) -> None:
    subs = [f"user-{n:03d}" for n in range(50)]
    await create_deployment(empty_database_url, OLD_KEY)
    await store_records(empty_database_url, await keyring_for(empty_database_url, OLD_KEY), subs)
    old = server_environment(empty_database_url, MASTER_ENCRYPTION_KEY=OLD_KEY)

    made = _run(old, tmp_path, "seal", "recovery-kit", "--shares", "3", "--threshold", "2")

    assert made.returncode == 0, made.stderr
    assert made.stderr == ""
    lines = made.stdout.splitlines()
    assert lines[0].startswith("recovery kit made: any 2 of these 3 shares recover")
    shares = [lines[i + 1] for i, line in enumerate(lines) if line.startswith("share ")]
    assert [line for line in lines if line.startswith("share ")] == [
        "share 1 of 3:",
        "share 2 of 3:",
        "share 3 of 3:",
    ]
    assert all(len(share.split()) == 33 for share in shares)

    # The master key is thrown away; a new one is configured and opens nothing yet.
    new = server_environment(empty_database_url, MASTER_ENCRYPTION_KEY=NEW_KEY)
    assert "does not match" in one_line_refusal(keyvault(new, tmp_path, "keys", "status"))
    too_few = _run(new, tmp_path, "seal", "recover", stdin=f"{shares[0]}\n")
    assert "this kit needs 2" in one_line_refusal(too_few)
    assert _run(new, tmp_path, "seal", "recover", shares[0]).returncode == 2  # no arguments

    recovered = _run(new, tmp_path, "seal", "recover", stdin=f"\n{shares[2]}\n  {shares[0]}  \n")

    assert recovered.returncode == 0, recovered.stderr
    assert recovered.stderr == ""
    assert recovered.stdout.startswith("keyring recovered: 2 root keys and 0 audit keys are now")
    for share in shares:
        for output in (made.stderr, recovered.stdout, recovered.stderr, too_few.stderr):
            assert " ".join(share.split()[2:6]) not in output
    status = keyvault(new, tmp_path, "seal", "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[3].startswith("recovery kit: made ")
    assert status.stdout.splitlines()[3].endswith(", any 2 of 3 shares")
    verified = keyvault(new, tmp_path, "audit", "verify")
    assert verified.stdout == "audit chain intact: 2 events verified\n"
    keyring = await opened(env_settings(empty_database_url, NEW_KEY))
    assert await open_all(empty_database_url, keyring) == {sub: api_key_of(sub) for sub in subs}
    assert "master key was retired" in one_line_refusal(keyvault(old, tmp_path, "keys", "status"))


def test_an_impossible_kit_is_refused_in_one_line(empty_database_url: str, tmp_path: Path) -> None:
    env = server_environment(empty_database_url)
    refused = _run(env, tmp_path, "seal", "recovery-kit", "--shares", "3", "--threshold", "1")
    assert "a threshold of 1 would make every share a full copy" in one_line_refusal(refused)


def _on_a_terminal(env: dict[str, str], cwd: Path, args: list[str], typed: list[str]) -> str:
    """Run `keyvault` with a pseudo-terminal as its controlling terminal, typing the next line of
    `typed` at each new prompt; everything the terminal showed."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: a new session, the pty's slave as its terminal
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-m", "keyvault", *args], env)
    shown = b""
    answered = 0  # how much of `shown` the last line typed answered
    pending = list(typed)
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([terminal], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # the child exited and the terminal closed
                break
            if not chunk:
                break
            shown += chunk
            # Click shows "share 1:" and only then calls getpass, which turns echo off, flushes
            # the terminal's pending input and writes its own prompt, " ": a line typed before
            # that space would be thrown away.
            if pending and shown[answered:].endswith(b": "):
                os.write(terminal, pending.pop(0).encode() + b"\n")
                answered = len(shown)
        else:
            raise AssertionError(f"no end in time: {shown.decode(errors='replace')}")
    finally:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return shown.decode(errors="replace")


async def test_recover_prompts_on_a_terminal_without_echoing_the_shares(
    empty_database_url: str, tmp_path: Path
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    await store_records(empty_database_url, await keyring_for(empty_database_url, OLD_KEY), ["a"])
    old = server_environment(empty_database_url, MASTER_ENCRYPTION_KEY=OLD_KEY)
    made = _run(old, tmp_path, "seal", "recovery-kit", "--shares", "2", "--threshold", "2")
    lines = made.stdout.splitlines()
    shares = [lines[i + 1] for i, line in enumerate(lines) if line.startswith("share ")]
    new = server_environment(empty_database_url, MASTER_ENCRYPTION_KEY=NEW_KEY)

    shown = _on_a_terminal(new, tmp_path, ["seal", "recover"], shares)
    assert "keyring recovered: " in shown, shown

    assert "share 1:" in shown
    assert "share 2 of 2:" in shown
    assert "keyring recovered: " in shown
    for share in shares:
        assert " ".join(share.split()[:4]) not in shown
    keyring = await opened(env_settings(empty_database_url, NEW_KEY))
    assert await open_all(empty_database_url, keyring) == {"a": api_key_of("a")}
