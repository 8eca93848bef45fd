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
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn, ParamSpec, TypeVar

import asyncpg
import typer
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from keyvault.audit.events import Verification
from keyvault.audit.trail import verify_stored_chain
from keyvault.auth.tokens import mint_token
from keyvault.config import ConfigurationError, Settings, load_settings
from keyvault.crypto.records import Keyring
from keyvault.db.engine import DEFAULT_DATABASE_URL, create_engine, create_sessionmaker
from keyvault.db.migrations import is_at_head, upgrade_to_head
from keyvault.legacy_import import importer as seed_import
from keyvault.legacy_import.seed_crypto import SEED_ITERATIONS
from keyvault.master_keys import rotation
from keyvault.master_keys.unlock import MasterKeyMismatchError, check_before_migration, unlock
from keyvault.observability.logs import logging_config
from keyvault.observability.metrics import MULTIPROCESS_DIR_VARIABLE

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
# Under Docker's default 10 s stop timeout, yet ample for requests that take milliseconds.
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 8

Sessions = async_sessionmaker[AsyncSession]


def one_line_failures(command: Callable[P, R]) -> Callable[P, R]:
    """Known failures print one line to stderr and exit 1; their messages hold no secrets."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (
            ConfigurationError,
            MasterKeyMismatchError,
            SchemaNotReadyError,
            seed_import.SeedImportError,
        ) as error:
            _fail(str(error))
        # asyncpg's own errors at connect time (no such database, login refused) reach us
        # unwrapped by SQLAlchemy.
        except (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
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
    upgrade_to_head(settings.database_url.get_secret_value())
    asyncio.run(_check_unlocks(settings))
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
    asyncio.run(_check_unlocks(settings))
    _exit_cleanly_after_sigterm()
    with multiprocess_metrics(workers):
        uvicorn.run(
            "keyvault.web.app:create_served_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # By name, as the app is: the CLI imports nothing of keyvault.web.
            http="keyvault.web.http_protocol:GuardedHttpProtocol",
            # keyvault serves no WebSocket route; an upgrade request is answered as plain HTTP.
            ws="none",
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


@audit_app.command("verify")
@one_line_failures
def audit_verify() -> None:
    """Walk the audit chain; exit 1 naming the first event that was edited, inserted or removed."""
    settings = load_settings()
    result = asyncio.run(_verify_audit(settings))
    if not result.intact:
        _fail(
            f"audit chain broken at event {result.first_bad_seq}: {result.problem} "
            f"({result.events_checked} events verified before it)"
        )
    typer.echo(f"audit chain intact: {result.events_checked} events verified")


async def _verify_audit(settings: Settings) -> Verification:
    async with _unlocked(settings) as (sessions, keyring):
        engine = sessions.kw["bind"]
        async with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                # One snapshot: events and head as of one moment while the service keeps writing.
                connection = await connection.execution_options(isolation_level="REPEATABLE READ")
            async with connection.begin():
                return await verify_stored_chain(connection, keyring)


async def _check_existing_master_key(settings: Settings, master_key: str) -> None:
    """Before any migration runs: a database that already has a verifier must accept this key."""
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        if await _has_deployment(engine):
            await check_before_migration(
                create_sessionmaker(engine), master_key, settings.previous_master_keys()
            )
    finally:
        await engine.dispose()


async def _has_deployment(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: inspect(sync).has_table("master_key_verifiers")
        )


async def _check_unlocks(settings: Settings) -> None:
    """The schema is current and the configured master keys open this deployment."""
    async with _unlocked(settings):
        pass


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


# --- Master-key lifecycle: rotate, keys status (logic in keyvault.rotation) -------------------

keys_app = typer.Typer(help="Which master keys the stored records need.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@asynccontextmanager
async def _unlocked(settings: Settings) -> AsyncIterator[tuple[Sessions, Keyring]]:
    """Sessions and the full keyring (current and previous keys) over a migrated database."""
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        if not await is_at_head(engine, settings.database_url.get_secret_value()):
            raise SchemaNotReadyError()
        sessions = create_sessionmaker(engine)
        keyring = await unlock(
            sessions,
            settings.master_key(),
            iterations_for_new=settings.kdf_iterations,
            previous=settings.previous_master_keys(),
        )
        yield sessions, keyring
    finally:
        await engine.dispose()


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (stdout keeps only the summary), advanced by the returned callable."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    # Only on a terminal: in a log or a pipe, the summary line is the record.
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.advance(task, done)


@app.command()
@one_line_failures
def rotate(
    batch_size: Annotated[
        int, typer.Option(min=1, help="Records per transaction.")
    ] = rotation.DEFAULT_BATCH_SIZE,
    dry_run: Annotated[
        bool, typer.Option(help="Open every record and count; write nothing.")
    ] = False,
) -> None:
    """Rewrap every record still sealed under a previous master key with the current one.

    Safe while the service runs, safe to run several at once, safe to kill and run again.
    """
    settings = load_settings()

    async def run() -> tuple[rotation.RewrapReport, Keyring]:
        async with _unlocked(settings) as (sessions, keyring):
            total = await rotation.count_to_rewrap(sessions, keyring)
            with _progress("rewrapping", total) as advance:
                report = await rotation.rewrap(
                    sessions, keyring, batch_size=batch_size, dry_run=dry_run, on_batch=advance
                )
            return report, keyring

    report, keyring = asyncio.run(run())
    for sub in report.corrupt:
        typer.echo(
            f"keyvault: the record of sub {sub!r} fails its integrity check; left as it is",
            err=True,
        )
    for key_id, count in sorted(report.unconfigured.items()):
        typer.echo(
            f"keyvault: {count} records are sealed under key id {key_id}, which is not configured; "
            "left as they are",
            err=True,
        )
    typer.echo(rotation.summary(report, keyring, dry_run=dry_run))
    if report.corrupt or report.unconfigured:
        raise typer.Exit(code=1)


@keys_app.command("status")
@one_line_failures
def keys_status() -> None:
    """Records per key id and format version, and which configured keys are no longer needed."""
    settings = load_settings()

    async def run() -> rotation.KeysReport:
        async with _unlocked(settings) as (sessions, keyring):
            return await rotation.keys_report(sessions, keyring)

    report = asyncio.run(run())
    roles = {report.current_key_id: "current"}
    roles.update({k: f"previous #{n}" for n, k in enumerate(report.previous_key_ids, start=1)})
    typer.echo(f"{'key id':<18}{'format':<8}{'records':>10}  configured as")
    for entry in report.usage:
        role = roles.get(entry.key_id, "NOT CONFIGURED: these records cannot be read")
        typer.echo(f"{entry.key_id:<18}v{entry.format_version:<7}{entry.records:>10}  {role}")
    if not report.usage:
        typer.echo("(no records)")
    for position, key_id in report.unneeded_previous:
        typer.echo(f"previous key #{position} (id {key_id}) is no longer needed and may be removed")
    if report.unconfigured:
        raise typer.Exit(code=1)


# --- Import from the seed application (logic in keyvault.seed_import) -------------------------


@app.command("import-seed")
@one_line_failures
def import_seed(
    source: Annotated[
        str,
        typer.Option(
            "--from", help="The seed application's database URL (postgresql://… or sqlite:///…)."
        ),
    ],
    master_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the seed's master key.")
    ] = None,
    master_key_file: Annotated[
        Path | None, typer.Option(help="File holding the seed's master key.")
    ] = None,
    iterations: Annotated[
        int, typer.Option(min=1, help="The seed's PBKDF2 iterations.")
    ] = SEED_ITERATIONS,
    overwrite: Annotated[
        bool, typer.Option(help="Replace vault values even when they are newer than the seed's.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Decrypt and count; write nothing.")] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Processes deriving the seed's keys.")
    ] = os.cpu_count() or 1,
) -> None:
    """Import the seed application's users' keys, re-sealed under the current master key.

    The seed's master key is read from an environment variable or a file, never the command line.
    """
    seed_master_key = _seed_master_key(master_key_env, master_key_file)
    settings = load_settings()

    async def run() -> seed_import.ImportReport:
        engine = seed_import.seed_engine(source)
        try:
            async with _unlocked(settings) as (sessions, keyring):
                total = await seed_import.count_seed_rows(engine)
                with _progress("importing", total) as advance:
                    return await seed_import.import_seed(
                        engine,
                        sessions,
                        keyring,
                        seed_master_key,
                        iterations=iterations,
                        overwrite=overwrite,
                        dry_run=dry_run,
                        workers=workers,
                        on_rows=advance,
                    )
        finally:
            await engine.dispose()

    report = asyncio.run(run())
    for sub, reason in report.failures:
        typer.echo(f"keyvault: {sub!r} failed: {reason}", err=True)
    typer.echo(report.summary(dry_run=dry_run))
    if report.failures:
        raise typer.Exit(code=1)


def _seed_master_key(env_name: str | None, path: Path | None) -> str:
    if (env_name is None) == (path is None):
        raise ConfigurationError("give exactly one of --master-key-env and --master-key-file")
    if env_name is not None:
        key = os.environ.get(env_name, "")
        if not key:
            raise ConfigurationError(f"environment variable {env_name} is not set or empty")
        return key
    assert path is not None
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigurationError(
            f"--master-key-file {path} cannot be read: {error.strerror}"
        ) from None
    if not key:
        raise ConfigurationError(f"--master-key-file {path} is empty")
    return key
