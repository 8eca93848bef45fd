"""Engine and session lifecycle. A request's session commits or rolls back in `session_scope` only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SQLITE_BUSY_TIMEOUT_SECONDS = 30


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the service waits on Postgres before answering 503 instead (seconds).

    `statement` is enforced twice: by the server (statement_timeout, which cancels the query) and by
    asyncpg (command_timeout, for a server that stopped answering at all). The CLI and migrations
    use no timeouts: an ALTER on a large table may rightly take minutes.
    """

    connect: float
    statement: float
    pool: float


def create_engine(database_url: str, timeouts: Timeouts | None = None) -> AsyncEngine:
    # hide_parameters: a failed statement's message must never carry the values it was given.
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(
            url,
            hide_parameters=True,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        )
        event.listen(engine.sync_engine, "connect", _tune_sqlite)
        return engine
    if timeouts is None:
        return create_async_engine(url, hide_parameters=True, pool_pre_ping=True)
    return create_async_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_timeout=timeouts.pool,
        connect_args={
            "timeout": timeouts.connect,
            "command_timeout": timeouts.statement,
            "server_settings": {
                "statement_timeout": str(round(timeouts.statement * 1000)),
                "application_name": "keyvault",
            },
        },
    )


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers go on while one writer commits; concurrent PUTs wait instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def session_scope(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """The one place a unit of work is committed, or rolled back when anything in it failed."""
    async with sessions() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()
