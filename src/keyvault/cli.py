"""`keyvault …`: set up, migrate, serve, and mint development tokens. Failures are one line, exit 1."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, ParamSpec, TypeVar

import typer
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from keyvault.audit import Verification
from keyvault.audit_trail import verify_stored_chain
from keyvault.auth import mint_token
from keyvault.config import DEFAULT_DATABASE_URL, ConfigurationError, Settings, load_settings
from keyvault.db import create_engine, create_sessionmaker
from keyvault.master_keys import MasterKeyMismatchError, unlock
from keyvault.migrations import is_at_head, upgrade_to_head

app = typer.Typer(
    help="keyvault: users' third-party API keys, encrypted at rest, served over authenticated HTTP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

P = ParamSpec("P")
R = TypeVar("R")

MASTER_KEY_BYTES = 32
JWT_SECRET_BYTES = 48


def one_line_failures(command: Callable[P, R]) -> Callable[P, R]:
    """Known failures print one line to stderr and exit 1; their messages hold no secrets."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (ConfigurationError, MasterKeyMismatchError, SchemaNotReadyError) as error:
            _fail(str(error))
        except SQLAlchemyError as error:
            _fail(
                f"database error ({type(error).__name__}); check KEYVAULT_DATABASE_URL and that it is up"
            )
        except OSError as error:
            _fail(f"{type(error).__name__}: {error.strerror or 'I/O error'}")

    return wrapper


def _fail(message: str) -> NoReturn:
    typer.echo(f"keyvault: {message}", err=True)
    raise typer.Exit(code=1)


class SchemaNotReadyError(Exception):
    def __init__(self) -> None:
        super().__init__(
            "the database schema is missing or out of date; run `keyvault migrate` first"
        )


@app.command("generate-master-key")
def generate_master_key() -> None:
    """Print a new random master key (store it somewhere safe: losing it loses every key)."""
    typer.echo(secrets.token_urlsafe(MASTER_KEY_BYTES))


@app.command()
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


@app.command()
@one_line_failures
def migrate() -> None:
    """Create or upgrade the schema, then check (or, on a new database, record) the master key."""
    settings = load_settings()
    master_key = settings.master_key()
    asyncio.run(_check_existing_master_key(settings, master_key))
    upgrade_to_head(settings.database_url)
    asyncio.run(_unlock(settings, master_key, require_head=True))
    typer.echo("database is at the latest schema; master key verified")


@app.command()
@one_line_failures
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Run the HTTP service (after checking the schema and the master key)."""
    import uvicorn

    settings = load_settings()
    asyncio.run(_unlock(settings, settings.master_key(), require_head=True))
    _configure_logging()
    uvicorn.run(
        "keyvault.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        server_header=False,
    )


@app.command()
@one_line_failures
def token(
    sub: Annotated[str, typer.Option(help="The user the token speaks for.")],
    scope: Annotated[
        str, typer.Option(help='Space-separated, e.g. "api-key:read api-key:write".')
    ] = "api-key:read api-key:write api-key:delete",
    ttl: Annotated[int, typer.Option(min=1, help="Lifetime in seconds.")] = 3600,
) -> None:
    """Mint an HS256 token for development and print only the token."""
    settings = load_settings()
    if settings.jwt_secret is None:
        raise ConfigurationError("KEYVAULT_JWT_SECRET is not set; tokens cannot be minted")
    typer.echo(mint_token(settings, sub, scope, ttl))


@audit_app.command("verify")
@one_line_failures
def audit_verify() -> None:
    """Walk the audit chain; exit 1 naming the first event that was edited, inserted or removed."""
    settings = load_settings()
    result = asyncio.run(_verify_audit(settings, settings.master_key()))
    if not result.intact:
        _fail(
            f"audit chain broken at event {result.first_bad_seq}: {result.problem} "
            f"({result.events_checked} events verified before it)"
        )
    typer.echo(f"audit chain intact: {result.events_checked} events verified")


async def _verify_audit(settings: Settings, master_key: str) -> Verification:
    engine = create_engine(settings.database_url)
    try:
        if not await is_at_head(engine, settings.database_url):
            raise SchemaNotReadyError()
        keyring = await unlock(
            create_sessionmaker(engine), master_key, iterations_for_new=settings.kdf_iterations
        )
        async with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                # One snapshot: events and head as of one moment while the service keeps writing.
                connection = await connection.execution_options(isolation_level="REPEATABLE READ")
            async with connection.begin():
                return await verify_stored_chain(connection, keyring)
    finally:
        await engine.dispose()


async def _check_existing_master_key(settings: Settings, master_key: str) -> None:
    """Before any migration runs: a database that already has a verifier must accept this key."""
    engine = create_engine(settings.database_url)
    try:
        if await _has_deployment(engine):
            await unlock(
                create_sessionmaker(engine), master_key, iterations_for_new=settings.kdf_iterations
            )
    finally:
        await engine.dispose()


async def _has_deployment(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: inspect(sync).has_table("master_key_verifiers")
        )


async def _unlock(settings: Settings, master_key: str, *, require_head: bool) -> None:
    engine = create_engine(settings.database_url)
    try:
        if require_head and not await is_at_head(engine, settings.database_url):
            raise SchemaNotReadyError()
        await unlock(
            create_sessionmaker(engine), master_key, iterations_for_new=settings.kdf_iterations
        )
    finally:
        await engine.dispose()


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
