"""The pool pings only connections that sat idle, recovers from one killed under it, and has the
configured size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from keyvault.crypto.records import Keyring
from keyvault.db import engine as db
from keyvault.web.app import create_app
from keyvault.web.state import state_of
from tests.conftest import POSTGRES_ADMIN_URL, _asyncpg_dsn, make_settings


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        pid: int = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        return pid


async def _terminate(pid: int) -> None:
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL))
    try:
        # The timeout makes the call wait until the backend is gone.
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    finally:
        await admin.close()


@pytest.fixture
def postgres_only(backend: str) -> None:
    if backend != "postgres":
        pytest.skip("pings and killed backends are a Postgres matter")


@pytest.mark.usefixtures("postgres_only")
async def test_idle_connection_that_went_stale_is_replaced_before_use(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)  # every pooled connection counts as idle
    engine = db.create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        stale = await _backend_pid(engine)
        await _terminate(stale)

        assert await _backend_pid(engine) != stale
    finally:
        await engine.dispose()


@pytest.mark.usefixtures("postgres_only")
async def test_busy_connection_killed_under_it_fails_once_then_the_pool_recovers(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 3600.0)  # recently used: no ping
    engine = db.create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        killed = await _backend_pid(engine)
        await _terminate(killed)

        with pytest.raises(DBAPIError) as failure:
            await _backend_pid(engine)
        assert failure.value.connection_invalidated  # what the API answers 503 + Retry-After for
        assert await _backend_pid(engine) != killed
    finally:
        await engine.dispose()


@pytest.mark.usefixtures("postgres_only")
async def test_pool_stays_usable_after_a_driver_connection_query_is_cut_off(
    database_url: str,
) -> None:
    engine = db.create_engine(database_url, pool_size=1, max_overflow=0)

    async def slow_query() -> None:
        async with db.driver_connection(engine) as connection:
            await connection.fetchval("SELECT pg_sleep(5)")

    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow_query(), timeout=0.2)

        async with db.driver_connection(engine) as connection:
            # asyncpg cancels the cut-off statement itself; the pooled connection stays good.
            assert await connection.fetchval("SELECT 42") == 42
    finally:
        await engine.dispose()


@pytest.mark.usefixtures("postgres_only")
async def test_configured_pool_size_is_the_request_pool_of_the_app(
    database_url: str, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYVAULT_DATABASE_POOL_SIZE", "3")
    settings = make_settings(database_url, database_pool_timeout=0.2)
    assert settings.database_pool_size == 3
    app = create_app(settings, keyring=keyring)
    async with app.router.lifespan_context(app), AsyncExitStack() as held:
        engine: AsyncEngine = state_of(app).sessions.kw["bind"]
        assert isinstance(engine.pool, AsyncAdaptedQueuePool)
        assert engine.pool.size() == 3
        for _ in range(3):
            connection = await held.enter_async_context(engine.connect())
            await connection.execute(text("SELECT 1"))
        # No overflow: a fourth request waits out the pool timeout instead of opening another.
        with pytest.raises(PoolTimeoutError):
            await held.enter_async_context(engine.connect())


@asynccontextmanager
async def _reads_sharing(
    database_url: str, *, share: int, wait_seconds: float = 30.0, pool_size: int = 3
) -> AsyncIterator[tuple[AsyncEngine, db.KeptDriverConnections]]:
    """A pool of `pool_size` and reads sharing `share` of it; all given back and closed after."""
    engine = db.create_engine(database_url, pool_size=pool_size, max_overflow=0)
    connections = db.KeptDriverConnections(engine, share, wait_seconds)
    try:
        yield engine, connections
    finally:
        await connections.aclose()
        await engine.dispose()


async def _kept_backend_pid(connections: db.KeptDriverConnections) -> int:
    async with connections.connection() as connection:
        pid: int = await connection.fetchval("SELECT pg_backend_pid()")
        return pid


@pytest.mark.usefixtures("postgres_only")
async def test_kept_connections_are_reused_and_given_back_on_close(database_url: str) -> None:
    async with _reads_sharing(database_url, share=2) as (engine, connections):
        first = await _kept_backend_pid(connections)
        assert await _kept_backend_pid(connections) == first
        assert _checked_out(engine) == 1

        async with connections.connection(), connections.connection():
            assert _checked_out(engine) == 2
        assert _checked_out(engine) == 2  # both kept

        await connections.aclose()
        assert _checked_out(engine) == 0


def _checked_out(engine: AsyncEngine) -> int:
    return engine.pool.checkedout()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.usefixtures("postgres_only")
async def test_reads_beyond_the_share_wait_for_a_kept_connection_and_leave_the_pool_free(
    database_url: str,
) -> None:
    most_at_once = 0

    async def read() -> None:
        nonlocal most_at_once
        async with connections.connection() as connection:
            most_at_once = max(most_at_once, _checked_out(engine))
            await connection.fetchval("SELECT pg_sleep(0.05)")

    async with _reads_sharing(database_url, share=2) as (engine, connections):
        await asyncio.gather(*(read() for _ in range(6)))
        assert most_at_once == 2
        # The third connection was never taken by reads: anything else still gets it at once.
        assert await _backend_pid(engine) > 0


@pytest.mark.usefixtures("postgres_only")
async def test_a_read_waiting_past_the_pool_timeout_fails_as_a_pool_timeout(
    database_url: str,
) -> None:
    async with _reads_sharing(database_url, share=1, wait_seconds=0.1) as (engine, connections):
        async with connections.connection():
            with pytest.raises(PoolTimeoutError):
                await _kept_backend_pid(connections)
        assert db.is_database_outage(PoolTimeoutError())  # answered 503, as a full pool is
        assert await _kept_backend_pid(connections) > 0  # nothing is left waiting or lost
        assert _checked_out(engine) == 1


@pytest.mark.usefixtures("postgres_only")
async def test_a_read_cancelled_as_a_connection_is_handed_to_it_does_not_lose_the_connection(
    database_url: str,
) -> None:
    async with _reads_sharing(database_url, share=1) as (engine, connections):
        async with connections.connection() as held:
            holder = await held.fetchval("SELECT pg_backend_pid()")
            waiting = asyncio.create_task(_kept_backend_pid(connections))
            await asyncio.sleep(0.05)
        # The connection was handed to the waiting read; it is cancelled before it could run.
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

        assert await asyncio.wait_for(_kept_backend_pid(connections), timeout=1) == holder
        assert _checked_out(engine) == 1


@pytest.mark.usefixtures("postgres_only")
async def test_a_read_waiting_when_a_held_connection_fails_checks_out_a_new_one(
    database_url: str,
) -> None:
    async with _reads_sharing(database_url, share=1, wait_seconds=2) as (engine, connections):
        killed = await _kept_backend_pid(connections)
        waiting: asyncio.Task[int] | None = None

        async def read_as_its_connection_is_killed() -> None:
            nonlocal waiting
            async with connections.connection() as connection:
                waiting = asyncio.create_task(_kept_backend_pid(connections))
                await asyncio.sleep(0.05)
                await _terminate(killed)
                await connection.fetchval("SELECT 1")

        with pytest.raises((OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
            await read_as_its_connection_is_killed()
        assert waiting is not None
        assert await waiting != killed
        assert _checked_out(engine) == 1


@pytest.mark.usefixtures("postgres_only")
async def test_a_kept_connection_that_went_stale_is_replaced_before_use(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)  # every kept connection counts as idle
    async with _reads_sharing(database_url, share=1) as (engine, connections):
        stale = await _kept_backend_pid(connections)
        await _terminate(stale)

        assert await _kept_backend_pid(connections) != stale
        await connections.aclose()
        assert _checked_out(engine) == 0


@pytest.mark.usefixtures("postgres_only")
async def test_a_kept_connection_killed_under_it_fails_once_then_reads_recover(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 3600.0)  # recently used: no ping
    async with _reads_sharing(database_url, share=1) as (engine, connections):
        killed = await _kept_backend_pid(connections)
        await _terminate(killed)

        with pytest.raises((OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
            await _kept_backend_pid(connections)
        assert await _kept_backend_pid(connections) != killed
        assert _checked_out(engine) == 1


@pytest.mark.usefixtures("postgres_only")
async def test_a_cut_off_statement_gives_its_connection_back_to_the_pool(
    database_url: str,
) -> None:

    async def slow_query() -> None:
        async with connections.connection() as connection:
            await connection.fetchval("SELECT pg_sleep(5)")

    async with _reads_sharing(database_url, share=1, pool_size=1) as (engine, connections):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow_query(), timeout=0.2)
        assert _checked_out(engine) == 0
        # The pool's only connection is usable again, by the pool's other users too.
        assert await _backend_pid(engine) > 0
        assert await _kept_backend_pid(connections) > 0


@pytest.mark.usefixtures("postgres_only")
async def test_a_read_still_running_at_close_gives_its_connection_back_when_it_ends(
    database_url: str,
) -> None:
    async with _reads_sharing(database_url, share=1) as (engine, connections):

        async def slow_read() -> None:
            async with connections.connection() as connection:
                await connection.fetchval("SELECT pg_sleep(0.3)")

        read = asyncio.create_task(slow_read())
        await asyncio.sleep(0.1)
        await connections.aclose()
        await read
        assert _checked_out(engine) == 0


async def _read_one(connections: db.KeptDriverConnections) -> int:
    async with connections.connection() as connection:
        one: int = await connection.fetchval("SELECT 1")
        return one


async def _fail_holding_one(
    connections: db.KeptDriverConnections, waiting: int
) -> list[asyncio.Task[int]]:
    """Holding the share's one connection, start `waiting` reads, then fail: the connection goes
    back to the pool and its place to the first waiting read."""
    tasks: list[asyncio.Task[int]] = []

    async def failing_read() -> None:
        async with connections.connection():
            tasks.extend(asyncio.create_task(_read_one(connections)) for _ in range(waiting))
            await asyncio.sleep(0.05)
            raise ValueError("the statement failed")

    with pytest.raises(ValueError, match="statement failed"):
        await failing_read()
    return tasks


@pytest.mark.usefixtures("postgres_only")
async def test_the_place_of_a_dropped_connection_passes_on_when_its_next_read_is_cancelled(
    database_url: str,
) -> None:
    async with _reads_sharing(database_url, share=1, wait_seconds=5) as (engine, connections):
        first, second = await _fail_holding_one(connections, waiting=2)
        first.cancel()  # its request went away before it could use the place it was given

        assert await asyncio.wait_for(second, timeout=1) == 1
        with pytest.raises(asyncio.CancelledError):
            await first
        assert _checked_out(engine) == 1


@pytest.mark.usefixtures("postgres_only")
async def test_the_place_of_a_failed_checkout_passes_on_to_the_next_waiting_read(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = AsyncEngine.raw_connection
    checkouts = 0

    async def second_checkout_times_out(self: AsyncEngine) -> object:
        nonlocal checkouts
        checkouts += 1
        if checkouts == 2:  # the first waiting read's: the rest of the pool is busy with writes
            raise PoolTimeoutError("the pool is busy")
        return await checkout(self)

    monkeypatch.setattr(AsyncEngine, "raw_connection", second_checkout_times_out)
    async with _reads_sharing(database_url, share=1, wait_seconds=5) as (engine, connections):
        first, second = await _fail_holding_one(connections, waiting=2)

        with pytest.raises(PoolTimeoutError):
            await asyncio.wait_for(first, timeout=1)
        assert await asyncio.wait_for(second, timeout=1) == 1
        assert _checked_out(engine) == 1
