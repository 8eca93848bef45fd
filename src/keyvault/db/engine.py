"""Engine and session lifecycle. A request's session commits or rolls back in `session_scope` only."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

# The embedded database of `make run` and `keyvault init`, in the working directory.
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./keyvault.db"
SQLITE_BUSY_TIMEOUT_SECONDS = 30
IDLE_PING_SECONDS = 5.0
_LAST_USED = "keyvault_last_used"
_last_disconnect = float("-inf")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the service waits on Postgres before answering 503 instead (seconds).

    `statement` is enforced twice: by the server (statement_timeout, which cancels the query) and by
    asyncpg (command_timeout, for a server that stopped answering at all). Every engine the service
    opens has them (config.Settings.database_timeouts); the CLI and migrations use none: an ALTER
    on a large table may rightly take minutes.
    """

    connect: float
    statement: float
    pool: float


# A fixed pool: a connection past pool_size ("overflow") is closed as soon as it is returned, so
# under steady load overflow means a new Postgres backend, TLS probe and type-codec set-up for many
# requests (milliseconds each). Requests beyond the pool wait for a connection instead. The
# service's request pool takes its size from KEYVAULT_DATABASE_POOL_SIZE.
DEFAULT_POOL_SIZE = 15
DEFAULT_MAX_OVERFLOW = 0


def create_engine(
    database_url: str,
    timeouts: Timeouts | None = None,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_MAX_OVERFLOW,
) -> AsyncEngine:
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
    connect_args: dict[str, Any] = {}
    pool_options: dict[str, Any] = {}
    if timeouts is not None:
        pool_options["pool_timeout"] = timeouts.pool
        connect_args = {
            "timeout": timeouts.connect,
            "command_timeout": timeouts.statement,
            "server_settings": {
                "statement_timeout": str(round(timeouts.statement * 1000)),
                "application_name": "keyvault",
            },
        }
    engine = create_async_engine(
        url,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        connect_args=connect_args,
        **pool_options,
    )
    event.listen(engine.sync_engine, "connect", _mark_used)
    event.listen(engine.sync_engine, "checkin", _mark_used)
    event.listen(engine.sync_engine, "checkout", _ping_if_idle)
    return engine


def _mark_used(dbapi_connection: Any, record: Any) -> None:
    record.info[_LAST_USED] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """pool_pre_ping, but only for connections idle long enough to have gone stale.

    SQLAlchemy's pre-ping on asyncpg costs three round trips (BEGIN, ";", ROLLBACK) on every
    checkout, more than the read itself. A connection used in the last few seconds is alive; one
    that sat idle (a database restart, a firewall's idle timeout) is pinged, and a failed ping
    makes the pool replace it before the request sees it. A ping that timed out is not followed by
    a new connection: the server took the connection and does not answer, so a new one would only
    wait out the connect timeout as well; the request gets its 503 (the pool invalidates the
    connection all the same).
    """
    last_used = record.info.get(_LAST_USED, float("-inf"))
    if time.monotonic() - last_used < IDLE_PING_SECONDS and last_used > _last_disconnect:
        return
    try:
        dbapi_connection.ping()
    except TimeoutError:
        raise
    except Exception:
        raise DisconnectionError("pooled connection failed its ping") from None


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers go on while one writer commits; concurrent PUTs wait instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def dialect_insert(session: AsyncSession) -> Any:
    """The session's dialect's insert(), the one with ON CONFLICT (Postgres or SQLite)."""
    dialect = session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


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


def driver_connection(engine: AsyncEngine) -> AbstractAsyncContextManager[Any]:
    """The pooled driver (asyncpg) connection itself, checked out for one use and given back.

    Going through an AsyncSession costs several times the query's own CPU time (session and
    connection set-up, greenlet hops, result processing); this skips all that but keeps the same
    pool, with its idle pings and its limits. No transaction is begun on it: a caller that needs
    one begins it. A connection that fails under the caller is invalidated, so the pool does not
    hand it out again. It is KeptDriverConnections keeping nothing.
    """
    return KeptDriverConnections(engine, share=0).connection()


def _driver(pooled: PoolProxiedConnection) -> Any:
    driver = pooled.driver_connection
    assert driver is not None  # None only once the connection is invalidated or closed
    return driver


_DISCONNECTS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


async def _invalidate(pooled: PoolProxiedConnection) -> None:
    # Like SQLAlchemy's own disconnect handling: this connection goes, and every pooled one older
    # than this moment is pinged before its next use (the database may have restarted).
    global _last_disconnect
    _last_disconnect = time.monotonic()
    await greenlet_spawn(pooled.invalidate)


class KeptDriverConnections:
    """driver_connection for the read path: up to `share` pooled connections, kept checked out
    between reads.

    Checking a connection out of SQLAlchemy's pool and back in costs CPU (greenlet hops, pool
    events), a noticeable part of a whole read, and a checkout that has to wait for the pool costs
    several times that (a task per wait). So a read takes a kept connection; when none is free it
    checks a new one out while fewer than `share` are held, and otherwise waits for the next one a
    read gives back (a future and a timer), for `wait_seconds` at most, then fails as the pool does
    (PoolTimeoutError: 503). Reads thereby never hold more than `share` connections: the rest of the
    pool stays free for writes and everything else, however many reads come at once.

    A kept connection that sat unused for IDLE_PING_SECONDS, or since before the last disconnect, is
    pinged before use, as the pool does (_ping_if_idle, a ping that timed out failing the read). One whose statement failed or was cut off
    goes back to the pool, or is invalidated when the connection itself failed; its place among the
    `share` goes straight to the first waiting read, which checks a new connection out for it, so
    no read waits while there is room. `share` 0 keeps nothing and sets no limit of its own: each
    use checks a connection out and back in.
    """

    def __init__(self, engine: AsyncEngine, share: int, wait_seconds: float = 30.0) -> None:
        self._engine = engine
        self._share = share
        self._wait_seconds = wait_seconds
        self._held = 0  # places taken: connections kept or in use, and checkouts under way
        self._kept: list[tuple[PoolProxiedConnection, float]] = []  # (connection, last used)
        self._waiting: collections.deque[asyncio.Future[PoolProxiedConnection | None]] = (
            collections.deque()
        )
        self._closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        pooled = await self._take()
        try:
            yield _driver(pooled)
        except _DISCONNECTS:
            await self._drop(pooled, invalidate=True)
            raise
        except BaseException:
            await self._drop(pooled, invalidate=False)
            raise
        await self._give_back(pooled)

    async def aclose(self) -> None:
        """Give every kept connection back to the pool (before the engine is disposed); reads
        still running give theirs back when they end."""
        self._closed = True
        kept, self._kept = self._kept, []
        for pooled, _ in kept:
            await self._drop(pooled, invalidate=False)

    async def _take(self) -> PoolProxiedConnection:
        while self._kept:
            pooled, last_used = self._kept.pop()  # the most recently used: least likely stale
            if time.monotonic() - last_used < IDLE_PING_SECONDS and last_used > _last_disconnect:
                return pooled
            try:
                await _driver(pooled).fetchrow(";")
            except TimeoutError:  # a server that does not answer: see _ping_if_idle
                await self._drop(pooled, invalidate=True)
                raise
            except Exception:
                await self._drop(pooled, invalidate=True)
                continue
            except BaseException:  # cancelled mid-ping: back to the pool, never lost
                await self._drop(pooled, invalidate=False)
                raise
            return pooled
        if self._share == 0 or self._closed or self._held < self._share:
            self._held += 1
            return await self._check_out()
        handed_over = await self._next_given_back()
        # None: a held connection was dropped, and its place among the `share` handed to this read.
        return handed_over if handed_over is not None else await self._check_out()

    async def _check_out(self) -> PoolProxiedConnection:
        """A new connection from the pool, in a place already counted in `_held`."""
        try:
            return await self._engine.raw_connection()
        except BaseException:
            self._free_place()
            raise

    async def _next_given_back(self) -> PoolProxiedConnection | None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[PoolProxiedConnection | None] = loop.create_future()
        self._waiting.append(waiter)
        timer = loop.call_later(self._wait_seconds, _time_out, waiter)
        try:
            return await waiter
        except BaseException:
            # Cancelled after a connection, or a place, was handed over: pass it on, never lose it.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed_over = waiter.result()
                if handed_over is None:
                    self._free_place()
                else:
                    await self._give_back(handed_over)
            raise
        finally:
            timer.cancel()

    async def _give_back(self, pooled: PoolProxiedConnection) -> None:
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.set_result(pooled)
        elif not self._closed and len(self._kept) < self._share:
            self._kept.append((pooled, time.monotonic()))
        else:
            await self._drop(pooled, invalidate=False)

    async def _drop(self, pooled: PoolProxiedConnection, *, invalidate: bool) -> None:
        """Give `pooled` back to the pool (or invalidate it); its place goes to a waiting read."""
        self._free_place()
        if invalidate:
            await _invalidate(pooled)
        else:
            await greenlet_spawn(pooled.close)

    def _free_place(self) -> None:
        """One of the `share` places is no longer used: the next waiting read gets it (and checks a
        connection out for it), or it is free."""
        waiter = self._next_waiter()
        if waiter is not None:
            waiter.set_result(None)
        else:
            self._held -= 1

    def _next_waiter(self) -> asyncio.Future[PoolProxiedConnection | None] | None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # neither timed out nor cancelled
                return waiter
        return None


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(PoolTimeoutError("no read connection was given back in time"))


_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})


def is_database_outage(error: BaseException) -> bool:
    """An unreachable, overloaded or stopping database: retrying later may work (503), and the
    error says nothing about the statement that met it. Paths that query asyncpg directly
    (driver_connection) see its errors unwrapped, so both kinds are recognised."""
    if isinstance(
        error,
        (
            OperationalError,
            PoolTimeoutError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
        ),
    ):
        return True
    if isinstance(error, DBAPIError):
        return error.connection_invalidated or _is_outage_sqlstate(error.orig)
    # asyncpg raises its own errors (and OSError, TimeoutError) while connecting, untranslated.
    return isinstance(error, (OSError, TimeoutError)) or _is_outage_sqlstate(error)


def _is_outage_sqlstate(error: BaseException | None) -> bool:
    """SQLSTATE classes 08 (connection), 53 (resources: too many connections, disk full) and 57
    (operator intervention: shutting down, starting up, statement timeout): retrying may work."""
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES
