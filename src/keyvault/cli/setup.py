"""`keyvault generate-master-key`, `init` and `migrate`: a deployment's settings and its schema."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from keyvault.cli.common import check_unlocks, one_line_failures
from keyvault.config import Settings, load_settings
from keyvault.db.engine import DEFAULT_DATABASE_URL, create_engine, create_sessionmaker
from keyvault.db.migrations import upgrade_to_head
from keyvault.master_keys.pkcs11_seal import open_hsm_seal
from keyvault.master_keys.seals import SealKind, configured_master_keys
from keyvault.master_keys.unlock import check_before_migration

MASTER_KEY_BYTES = 32
JWT_SECRET_BYTES = 48


def generate_master_key() -> None:
    """Print a new random master key (store it somewhere safe: losing it loses every key)."""
    typer.echo(secrets.token_urlsafe(MASTER_KEY_BYTES))


@one_line_failures
def init(
    env_file: Annotated[Path, typer.Option(help="Where to write the settings.")] = Path(".env"),
) -> None:
    """Write a .env with a fresh master key and JWT secret (mode 600), unless one exists."""
    if env_file.exists():
        typer.echo(f"{env_file} already exists; left as it is.")
        return
    content = (
        "# Written by `keyvault init`. Back up MASTER_ENCRYPTION_KEY: without it no key can be read.\n"
        f"MASTER_ENCRYPTION_KEY={secrets.token_urlsafe(MASTER_KEY_BYTES)}\n"
        f"KEYVAULT_JWT_SECRET={secrets.token_urlsafe(JWT_SECRET_BYTES)}\n"
        f"KEYVAULT_DATABASE_URL={DEFAULT_DATABASE_URL}\n"
    )
    descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(content)
    typer.echo(f"wrote {env_file} (mode 600) with a new master key and JWT secret")


@one_line_failures
def migrate() -> None:
    """Create or upgrade the schema, then check (or, on a new database, record) the master key
    (or, with KEYVAULT_SEAL=pkcs11, the HSM key)."""
    settings = load_settings()
    asyncio.run(_check_before_migration(settings))
    upgrade_to_head(settings.database_url.get_secret_value())
    asyncio.run(check_unlocks(settings))
    if settings.seal == SealKind.env:
        typer.echo("database is at the latest schema; master key verified")
    else:
        typer.echo(f"database is at the latest schema; keyring opened by the {settings.seal} seal")


async def _check_before_migration(settings: Settings) -> None:
    """Before any migration runs: the configured seal must be usable, and a database that already
    has a verifier must accept the master key (under the env seal, or when one is configured)."""
    if settings.seal == SealKind.env:
        master_keys: tuple[str, ...] = (settings.master_key(), *settings.previous_master_keys())
    else:
        open_hsm_seal(settings).close()
        master_keys = configured_master_keys(settings)
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        if await _has_deployment(engine):
            await check_before_migration(
                create_sessionmaker(engine), SealKind(settings.seal), master_keys
            )
    finally:
        await engine.dispose()


async def _has_deployment(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: inspect(sync).has_table("master_key_verifiers")
        )
