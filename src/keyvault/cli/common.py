"""What the commands share: one-line failures (exit 1), the unlocked database, the progress bar."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import NoReturn, ParamSpec, TypeVar

import alembic.util
import asyncpg
import typer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.config import ConfigurationError, Settings
from keyvault.crypto.records import Keyring
from keyvault.db.engine import create_engine, create_sessionmaker
from keyvault.db.migrations import is_at_head
from keyvault.legacy_import.importer import SeedImportError
from keyvault.master_keys.keyring import open_keyring
from keyvault.master_keys.seals import SealError
from keyvault.master_keys.unlock import MasterKeyMismatchError

P = ParamSpec("P")
R = TypeVar("R")

Sessions = async_sessionmaker[AsyncSession]


class SchemaNotReadyError(Exception):
    def __init__(self) -> None:
        super().__init__(
            "the database schema is missing or out of date; run `keyvault migrate` first"
        )


def one_line_failures(command: Callable[P, R]) -> Callable[P, R]:
    """Known failures print one line to stderr and exit 1; their messages hold no secrets."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (
            ConfigurationError,
            MasterKeyMismatchError,
            SealError,
            SchemaNotReadyError,
            SeedImportError,
        ) as error:
            fail(str(error))
        # asyncpg's own errors at connect time (no such database, login refused) reach us
        # unwrapped by SQLAlchemy.
        # Alembic's messages name revisions and script paths, never the database URL.
        except alembic.util.CommandError as error:
            fail(f"migration failed: {error}")
        except (SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            fail(
                f"database error ({type(error).__name__}); check KEYVAULT_DATABASE_URL and that it is up"
            )
        except (ConnectionError, TimeoutError) as error:
            fail(f"cannot reach the database ({type(error).__name__}); check KEYVAULT_DATABASE_URL")
        except OSError as error:
            fail(f"{type(error).__name__}: {error.strerror or 'I/O error'}")

    return wrapper


def fail(message: str) -> NoReturn:
    typer.echo(f"keyvault: {message}", err=True)
    raise typer.Exit(code=1)


@asynccontextmanager
async def unlocked(settings: Settings) -> AsyncIterator[tuple[Sessions, Keyring]]:
    """Sessions and the full keyring (current and previous keys, opened by the configured seal)
    over a migrated database."""
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        if not await is_at_head(engine, settings.database_url.get_secret_value()):
            raise SchemaNotReadyError()
        sessions = create_sessionmaker(engine)
        yield sessions, await open_keyring(sessions, settings)
    finally:
        await engine.dispose()


async def check_unlocks(settings: Settings) -> None:
    """The schema is current and the configured seal (and master keys) open this deployment."""
    async with unlocked(settings):
        pass


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (stdout keeps only the summary), advanced by the returned callable."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    # Only on a terminal: in a log or a pipe, the summary line is the record.
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.advance(task, done)
