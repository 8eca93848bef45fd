"""The `keyvault` command, run as a real process the way an operator runs it."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from keyvault.crypto.records import MIN_KDF_ITERATIONS
from tests.conftest import JWT_SECRET, MASTER_KEY

WRONG_KEY = "a-different-master-key-0123456789-abcdefgh"
COMMANDS = ["init", "migrate", "serve", "token", "generate-master-key"]


def keyvault(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("KEYVAULT_", "MASTER_ENCRYPTION"))
    }
    return subprocess.run(
        [sys.executable, "-m", "keyvault", *args],
        cwd=cwd,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def service_env(database_url: str, master_key: str = MASTER_KEY) -> dict[str, str]:
    return {
        "MASTER_ENCRYPTION_KEY": master_key,
        "KEYVAULT_JWT_SECRET": JWT_SECRET,
        "KEYVAULT_DATABASE_URL": database_url,
    }


def assert_one_line_failure(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keyvault: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(tmp_path: Path, command: str) -> None:
    result = keyvault(command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Usage" in result.stdout


def test_init_writes_a_private_env_file_once(tmp_path: Path) -> None:
    first = keyvault("init", cwd=tmp_path)
    env_file = tmp_path / ".env"
    content = env_file.read_text()

    assert first.returncode == 0
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "MASTER_ENCRYPTION_KEY=" in content
    assert "KEYVAULT_JWT_SECRET=" in content
    master_key = next(
        line for line in content.splitlines() if line.startswith("MASTER_ENCRYPTION_KEY=")
    )
    assert len(master_key.split("=", 1)[1]) >= 32
    assert master_key.split("=", 1)[1] not in first.stdout + first.stderr

    second = keyvault("init", cwd=tmp_path)
    assert second.returncode == 0
    assert env_file.read_text() == content


def test_generate_master_key_prints_a_fresh_strong_key(tmp_path: Path) -> None:
    keys = {keyvault("generate-master-key", cwd=tmp_path).stdout.strip() for _ in range(2)}
    assert len(keys) == 2
    assert all(len(key) >= 32 for key in keys)


def test_token_prints_only_a_valid_token(tmp_path: Path) -> None:
    result = keyvault(
        "token",
        "--sub",
        "google-oauth2|1234",
        "--scope",
        "api-key:read",
        "--ttl",
        "60",
        cwd=tmp_path,
        env=service_env("sqlite+aiosqlite:///unused.db"),
    )
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 1
    claims = jwt.decode(
        result.stdout.strip(), JWT_SECRET, algorithms=["HS256"], audience="keyvault"
    )
    assert claims["sub"] == "google-oauth2|1234"
    assert claims["scope"] == "api-key:read"
    assert claims["exp"] - claims["iat"] == 60


def test_migrate_then_migrate_again_succeeds(tmp_path: Path, empty_database_url: str) -> None:
    env = service_env(empty_database_url)
    assert keyvault("migrate", cwd=tmp_path, env=env).returncode == 0
    again = keyvault("migrate", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr


def test_migrate_with_a_wrong_master_key_refuses_in_one_line(
    tmp_path: Path, empty_database_url: str
) -> None:
    assert keyvault("migrate", cwd=tmp_path, env=service_env(empty_database_url)).returncode == 0

    result = keyvault("migrate", cwd=tmp_path, env=service_env(empty_database_url, WRONG_KEY))

    assert_one_line_failure(result, "does not match")
    assert WRONG_KEY not in result.stderr


def test_serve_with_a_wrong_master_key_refuses_in_one_line(
    tmp_path: Path, empty_database_url: str
) -> None:
    assert keyvault("migrate", cwd=tmp_path, env=service_env(empty_database_url)).returncode == 0
    result = keyvault(
        "serve", "--port", "1", cwd=tmp_path, env=service_env(empty_database_url, WRONG_KEY)
    )
    assert_one_line_failure(result, "does not match")


def test_serve_before_migrate_says_to_migrate(tmp_path: Path, empty_database_url: str) -> None:
    result = keyvault("serve", "--port", "1", cwd=tmp_path, env=service_env(empty_database_url))
    assert_one_line_failure(result, "keyvault migrate")


@pytest.mark.parametrize(
    ("master_key", "expected"),
    [
        ("CANARY-too-short", "at least 32 characters"),
        ("your-super-secret-master-key-change-this-in-production", "placeholder"),
    ],
)
def test_weak_master_key_stops_migrate_before_anything_is_written(
    tmp_path: Path, master_key: str, expected: str
) -> None:
    database = tmp_path / "never-created.db"
    result = keyvault(
        "migrate", cwd=tmp_path, env=service_env(f"sqlite+aiosqlite:///{database}", master_key)
    )
    assert_one_line_failure(result, expected)
    assert "CANARY" not in result.stderr
    assert not database.exists()


def test_missing_master_key_is_one_line(tmp_path: Path) -> None:
    result = keyvault("migrate", cwd=tmp_path, env={"KEYVAULT_JWT_SECRET": JWT_SECRET})
    assert_one_line_failure(result, "MASTER_ENCRYPTION_KEY")


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    env = service_env("postgresql://root@127.0.0.1:1/nothing")
    assert_one_line_failure(keyvault("migrate", cwd=tmp_path, env=env), "database")


async def _database_at_first_revision(database_url: str, master_key: str) -> None:
    """A deployment made by the first schema revision, before any later migration existed."""
    from datetime import UTC, datetime

    from alembic import command
    from sqlalchemy import text

    from keyvault.crypto.records import RootKey, new_deployment_salt
    from keyvault.db.engine import create_engine
    from keyvault.db.migrations import alembic_config

    await asyncio.to_thread(command.upgrade, alembic_config(database_url), "0001")
    salt = new_deployment_salt()
    root = RootKey.derive(master_key, salt, MIN_KDF_ITERATIONS)
    now = datetime.now(UTC)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("INSERT INTO deployment VALUES (1, :salt, :iterations, :now)"),
                {"salt": salt, "iterations": MIN_KDF_ITERATIONS, "now": now},
            )
            await connection.execute(
                text("INSERT INTO master_key_verifiers VALUES (:key_id, :verifier, :now)"),
                {"key_id": root.key_id, "verifier": root.verifier(), "now": now},
            )
    finally:
        await engine.dispose()


async def _schema_revision(database_url: str) -> str:
    from sqlalchemy import text

    from keyvault.db.engine import create_engine

    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return str(await connection.scalar(text("SELECT version_num FROM alembic_version")))
    finally:
        await engine.dispose()


async def test_migrate_upgrades_a_database_from_the_first_revision(
    tmp_path: Path, empty_database_url: str
) -> None:
    await _database_at_first_revision(empty_database_url, MASTER_KEY)

    wrong = await asyncio.to_thread(
        keyvault, "migrate", cwd=tmp_path, env=service_env(empty_database_url, WRONG_KEY)
    )
    assert_one_line_failure(wrong, "does not match")
    assert await _schema_revision(empty_database_url) == "0001"

    right = await asyncio.to_thread(
        keyvault, "migrate", cwd=tmp_path, env=service_env(empty_database_url)
    )
    assert right.returncode == 0, right.stderr
    assert await _schema_revision(empty_database_url) != "0001"


async def _set_schema_revision(database_url: str, revision: str) -> None:
    from sqlalchemy import text

    from keyvault.db.engine import create_engine

    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE alembic_version SET version_num = :revision"), {"revision": revision}
            )
    finally:
        await engine.dispose()


async def test_migrate_on_a_database_from_a_newer_keyvault_refuses_in_one_line(
    tmp_path: Path, empty_database_url: str
) -> None:
    env = service_env(empty_database_url)
    assert (await asyncio.to_thread(keyvault, "migrate", cwd=tmp_path, env=env)).returncode == 0
    await _set_schema_revision(empty_database_url, "9999")

    result = await asyncio.to_thread(keyvault, "migrate", cwd=tmp_path, env=env)

    assert_one_line_failure(result, "9999")
    assert await _schema_revision(empty_database_url) == "9999"
