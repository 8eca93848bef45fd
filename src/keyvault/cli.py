"""`keyvault …`: set up, migrate, serve, and mint development tokens. Failures are one line, exit 1."""

from __future__ import annotations

import asyncio
import functools
import logging
import logging.config
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn, ParamSpec, TypeVar

import typer
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from keyvault.auth import mint_token
from keyvault.config import DEFAULT_DATABASE_URL, ConfigurationError, Settings, load_settings
from keyvault.db import create_engine, create_sessionmaker
from keyvault.logs import logging_config
from keyvault.master_keys import MasterKeyMismatchError, unlock
from keyvault.metrics import MULTIPROCESS_DIR_VARIABLE
from keyvault.migrations import is_at_head, upgrade_to_head

app = typer.Typer(
    help="keyvault: users' third-party API keys, encrypted at rest, served over authenticated HTTP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

P = ParamSpec("P")
R = TypeVar("R")

MASTER_KEY_BYTES = 32
JWT_SECRET_BYTES = 48
# Under Docker's default 10 s stop timeout, yet ample for requests that take milliseconds.
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 8


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
        except (ConnectionError, TimeoutError) as error:
            _fail(
                f"cannot reach the database ({type(error).__name__}); check KEYVAULT_DATABASE_URL"
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
    ssl_certfile: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="PEM certificate (chain) file: serve HTTPS."
        ),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="PEM private key for --ssl-certfile."),
    ] = None,
    shutdown_timeout: Annotated[
        int,
        typer.Option(min=1, help="On SIGTERM, seconds to let in-flight requests finish."),
    ] = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
) -> None:
    """Run the HTTP service (after checking the schema and the master key)."""
    import uvicorn

    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ConfigurationError(
            "--ssl-certfile and --ssl-keyfile go together; give both or neither"
        )
    settings = load_settings()
    log_config = logging_config(settings.log_level)
    logging.config.dictConfig(log_config)
    asyncio.run(_unlock(settings, settings.master_key(), require_head=True))
    _exit_cleanly_after_sigterm()
    with multiprocess_metrics(workers):
        uvicorn.run(
            "keyvault.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=log_config,
            access_log=False,
            server_header=False,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            timeout_graceful_shutdown=shutdown_timeout,
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


def _exit_cleanly_after_sigterm() -> None:
    """SIGTERM is how an orchestrator asks for a stop; once uvicorn has drained, that is success.

    uvicorn finishes in-flight requests and closes the pool, then re-raises the signal it caught
    under the handler that was there before; with the default one the process would die by the
    signal (exit 143 in a container) after an orderly shutdown. This one exits 0 instead, and a
    SIGTERM that arrives before uvicorn installs its own handler (nothing in flight yet) too.
    """

    def exit_zero(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_zero)


@contextmanager
def multiprocess_metrics(workers: int) -> Iterator[None]:
    """Workers share counters through files in PROMETHEUS_MULTIPROC_DIR (a fresh one unless given).

    Set before uvicorn spawns the workers: prometheus-client picks its mode when a worker imports
    it. A given directory is emptied first, as prometheus-client requires between runs.
    """
    if workers == 1:
        yield
        return
    given = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix="keyvault-metrics-"))
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROCESS_DIR_VARIABLE] = str(directory)
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)
