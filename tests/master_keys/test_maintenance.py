"""The keyring's upkeep in the running service, on both databases: the lease that lets one
instance at a time rotate and rewrap, a scheduled rotation with its rewrap at a bounded rate and
the removal of the emptied key, other instances following without a restart, an instance that
cannot follow refusing writes, and a rotation under load with no failed request and no lost
write."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import update

from keyvault.crypto.records import Keyring
from keyvault.db.engine import session_scope
from keyvault.db.models import RootKeyEntry
from keyvault.master_keys import lease
from keyvault.master_keys.keyring import seal_opener
from keyvault.master_keys.live_keyring import WRITE_GRACE, LiveKeyring
from keyvault.master_keys.maintenance import KeyringMaintenance
from keyvault.web.app import KeyvaultApp, create_app
from keyvault.web.state import state_of
from tests.conftest import bearer, key_path, mint
from tests.deployments import (
    NEW_KEY,
    OLD_KEY,
    api_key_of,
    keyring_entries,
    open_all,
    open_sessions,
    stored_rows,
)
from tests.master_keys.rotation_support import (
    env_deployment,
    env_settings,
    opened,
    records_by_key_id,
    rotate_root,
)

SUBS = [f"user-{n:03d}" for n in range(60)]


def _token() -> str:
    return mint("service", "api-key:read api-key:write users:any")


async def _age_the_active_key(database_url: str, days: int) -> None:
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        await session.execute(
            update(RootKeyEntry)
            .where(RootKeyEntry.retired_at.is_(None))
            .values(created_at=datetime.now(UTC) - timedelta(days=days))
        )


@asynccontextmanager
async def _serving(
    database_url: str, master_key: str = OLD_KEY
) -> AsyncIterator[tuple[KeyvaultApp, httpx.AsyncClient]]:
    """An instance of the service whose upkeep rounds the test runs itself."""
    app = create_app(env_settings(database_url, master_key), maintain_keyring=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as client:
            yield app, client


def _maintenance(app: KeyvaultApp, *, rate: int = 100_000) -> KeyringMaintenance:
    """The app's upkeep, with emptied keys removed at once and the given rewrap rate."""
    maintenance = state_of(app).maintenance
    assert maintenance is not None
    maintenance.schedule = replace(
        maintenance.schedule, rewrap_rate=rate, removal_grace=timedelta(0)
    )
    return maintenance


async def test_one_holder_at_a_time_and_another_once_the_lease_ran_out(
    empty_database_url: str,
) -> None:
    await env_deployment(empty_database_url, OLD_KEY, [])
    ttl, now = timedelta(seconds=10), datetime.now(UTC)
    async with open_sessions(empty_database_url) as sessions:
        assert await lease.acquire(sessions, "keyring", "a", ttl, now)
        assert not await lease.acquire(sessions, "keyring", "b", ttl, now)
        assert await lease.acquire(sessions, "keyring", "a", ttl, now + timedelta(seconds=5))
        later = now + timedelta(seconds=16)
        assert await lease.acquire(sessions, "keyring", "b", ttl, later)
        assert not await lease.acquire(sessions, "keyring", "a", ttl, later)
        await lease.release(sessions, "keyring", "b", later)
        assert await lease.acquire(sessions, "keyring", "a", ttl, later)


async def test_two_instances_taking_the_lease_at_once_get_it_once(
    empty_database_url: str,
) -> None:
    await env_deployment(empty_database_url, OLD_KEY, [])
    ttl, now = timedelta(seconds=10), datetime.now(UTC)
    async with (
        open_sessions(empty_database_url) as first,
        open_sessions(empty_database_url) as second,
    ):
        taken = await asyncio.gather(
            lease.acquire(first, "keyring", "a", ttl, now),
            lease.acquire(second, "keyring", "b", ttl, now),
        )
    assert sorted(taken) == [False, True]


async def test_a_due_rotation_rewraps_every_record_and_removes_the_old_key(
    empty_database_url: str,
) -> None:
    derived = await env_deployment(empty_database_url, OLD_KEY, SUBS)
    await _age_the_active_key(empty_database_url, 91)
    async with _serving(empty_database_url) as (app, client):
        maintenance = _maintenance(app)

        await maintenance.run_once()

        current = state_of(app).keyring.current.current
        assert current.key_id != derived.current.key_id
        read = await client.get(key_path(SUBS[0]), headers=bearer(_token()))
        assert read.json()["api_key"] == api_key_of(SUBS[0])
    assert await records_by_key_id(empty_database_url) == {current.key_id: len(SUBS)}
    assert [e.key_id for e in await keyring_entries(empty_database_url)] == [current.key_id]
    reopened = await opened(env_settings(empty_database_url, OLD_KEY))
    assert await open_all(empty_database_url, reopened) == {s: api_key_of(s) for s in SUBS}


async def test_no_rotation_before_it_is_due_or_when_switched_off(empty_database_url: str) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS[:2])
    await _age_the_active_key(empty_database_url, 89)
    async with _serving(empty_database_url) as (app, _):
        maintenance = _maintenance(app)
        await maintenance.run_once()
        assert len(await keyring_entries(empty_database_url)) == 1
        await _age_the_active_key(empty_database_url, 1000)
        maintenance.schedule = replace(maintenance.schedule, rotation_days=0)
        await maintenance.run_once()
    assert len(await keyring_entries(empty_database_url)) == 1


async def test_the_rewrap_keeps_to_its_rate(empty_database_url: str) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS)
    await rotate_root(env_settings(empty_database_url, OLD_KEY))
    rate = 40  # records per second: 60 records take a second and a half at least
    async with _serving(empty_database_url) as (app, _):
        maintenance = _maintenance(app, rate=rate)
        started = time.monotonic()
        await maintenance.run_once()
        elapsed = time.monotonic() - started
    assert elapsed >= len(SUBS) / rate - 0.1
    assert len(await records_by_key_id(empty_database_url)) == 1


async def test_another_instance_follows_a_rotation_without_a_restart(
    empty_database_url: str,
) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS[:5])
    await _age_the_active_key(empty_database_url, 100)
    async with (
        _serving(empty_database_url) as (rotator, first),
        _serving(empty_database_url) as (
            follower,
            second,
        ),
    ):
        await _maintenance(rotator).run_once()
        new_key_id = state_of(rotator).keyring.current.current.key_id
        written = await first.put(
            key_path("fresh"), json={"api_key": "sk-fresh-0123456789"}, headers=bearer(_token())
        )
        assert written.status_code == 201

        # The follower meets a key id it does not hold, reloads once, and reads it.
        read = await second.get(key_path("fresh"), headers=bearer(_token()))
        assert read.status_code == 200, read.text
        assert read.json()["api_key"] == "sk-fresh-0123456789"
        assert state_of(follower).keyring.current.current.key_id == new_key_id
        rewritten = await second.put(
            key_path(SUBS[0]), json={"api_key": "sk-rewritten-0123456789"}, headers=bearer(_token())
        )
        assert rewritten.status_code == 200
    rows = await stored_rows(empty_database_url)
    assert rows["fresh"].key_id == rows[SUBS[0]].key_id == new_key_id


async def test_an_instance_that_cannot_open_the_new_key_stops_taking_writes(
    empty_database_url: str,
) -> None:
    """Started before a master-key change and a rotation by another instance, it keeps reading
    what it holds, and once the grace has passed it refuses writes (503) and is not ready."""
    await env_deployment(empty_database_url, OLD_KEY, SUBS[:3])
    await rotate_root(env_settings(empty_database_url, OLD_KEY))
    async with _serving(empty_database_url, OLD_KEY) as (stale, client):
        await opened(env_settings(empty_database_url, NEW_KEY, OLD_KEY))
        await rotate_root(env_settings(empty_database_url, NEW_KEY))
        state = state_of(stale)
        now = [datetime.now(UTC)]
        state.keyring = LiveKeyring(
            state.keyring.current,
            state.sessions,
            seal_opener(env_settings(empty_database_url, OLD_KEY), state.keyring.current),
            clock=lambda: now[0],
        )
        await state.keyring.reload()
        written = await client.put(
            key_path(SUBS[0]), json={"api_key": "sk-still-0123456789"}, headers=bearer(_token())
        )
        assert written.status_code == 200  # within the grace

        now[0] += WRITE_GRACE + timedelta(seconds=1)
        refused = await client.put(
            key_path(SUBS[1]), json={"api_key": "sk-refused-0123456789"}, headers=bearer(_token())
        )
        read = await client.get(key_path(SUBS[2]), headers=bearer(_token()))
        ready = await client.get("/readyz")

    assert refused.status_code == 503
    assert refused.json()["type"].endswith("/keyring-outdated")
    assert read.status_code == 200
    assert ready.status_code == 503
    current = await opened(env_settings(empty_database_url, NEW_KEY))
    assert await open_all(empty_database_url, current) == {
        SUBS[0]: "sk-still-0123456789",
        SUBS[1]: api_key_of(SUBS[1]),
        SUBS[2]: api_key_of(SUBS[2]),
    }


async def test_a_rotation_under_load_fails_no_request_and_loses_no_write(
    empty_database_url: str,
) -> None:
    subs = [f"load-{n:03d}" for n in range(480)]
    await env_deployment(empty_database_url, OLD_KEY, subs)
    await _age_the_active_key(empty_database_url, 365)
    last_written = {sub: api_key_of(sub) for sub in subs}
    statuses: list[int] = []
    async with (
        _serving(empty_database_url) as (rotator, first),
        _serving(empty_database_url) as (
            _,
            second,
        ),
    ):
        maintenance = _maintenance(rotator, rate=1_000)
        done = asyncio.Event()

        async def write(client: httpx.AsyncClient, offset: int) -> None:
            round_number = 0
            while not done.is_set() or round_number < 2:
                for sub in subs[offset::6]:
                    value = f"sk-{round_number}-{offset}-{sub}-0123456789"
                    response = await client.put(
                        key_path(sub), json={"api_key": value}, headers=bearer(_token())
                    )
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        last_written[sub] = value
                round_number += 1

        async def read(client: httpx.AsyncClient, offset: int) -> None:
            while not done.is_set():
                for sub in subs[offset::6]:
                    response = await client.get(key_path(sub), headers=bearer(_token()))
                    statuses.append(response.status_code)

        async def rotate() -> None:
            try:
                await maintenance.run_once()
                await state_of(rotator).keyring.reload()
            finally:
                done.set()

        clients = (first, second)
        await asyncio.gather(
            rotate(),
            *(write(clients[n % 2], n) for n in range(3)),
            *(read(clients[n % 2], n + 3) for n in range(3)),
        )
        # What the follower wrote under the old key before it reloaded goes in the next round.
        await maintenance.run_once()

    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    current = await opened(env_settings(empty_database_url, OLD_KEY))
    assert await records_by_key_id(empty_database_url) == {current.current.key_id: len(subs)}
    assert await open_all(empty_database_url, current) == last_written


async def test_while_it_rewraps_an_instance_follows_another_rotation_and_rewraps_onto_it(
    empty_database_url: str,
) -> None:
    _, first = await _rotated_under_many_records(empty_database_url)
    async with _serving(empty_database_url) as (app, _):
        maintenance, upkeep = _slow_upkeep(app)
        try:
            await _until(
                lambda counts: counts[first.current.key_id] > 0, empty_database_url, "a rewrap"
            )
            second = await rotate_root(env_settings(empty_database_url, OLD_KEY))
            await _until(
                lambda counts: counts[second.current.key_id] > 0,
                empty_database_url,
                "the rewrap onto the newer key",
            )
            assert state_of(app).keyring.current.current == second.current
            assert state_of(app).keyring.fresh
        finally:
            maintenance.stop()
            await asyncio.wait_for(upkeep, 10)


async def test_stopping_ends_a_rewrap_after_its_batch_and_releases_the_lease(
    empty_database_url: str,
) -> None:
    subs, first = await _rotated_under_many_records(empty_database_url)
    async with _serving(empty_database_url) as (app, _):
        maintenance, upkeep = _slow_upkeep(app)
        await _until(
            lambda counts: counts[first.current.key_id] > 0, empty_database_url, "a rewrap"
        )
        maintenance.stop()
        # Not cancelled: the batch in progress commits, the lease is given back.
        await asyncio.wait_for(upkeep, 10)
        assert not upkeep.cancelled()
        counts = await records_by_key_id(empty_database_url)
        assert 0 < counts[first.current.key_id] < len(subs)
        async with open_sessions(empty_database_url) as sessions:
            assert await lease.acquire(
                sessions, "keyring", "another", timedelta(seconds=10), datetime.now(UTC)
            )
        keyring = await opened(env_settings(empty_database_url, OLD_KEY))
        assert await open_all(empty_database_url, keyring) == {s: api_key_of(s) for s in subs}


async def _rotated_under_many_records(database_url: str) -> tuple[list[str], Keyring]:
    """300 records under a root key just retired: a rewrap at 50/s takes some seconds."""
    subs = [f"slow-{n:03d}" for n in range(300)]
    await env_deployment(database_url, OLD_KEY, subs)
    return subs, await rotate_root(env_settings(database_url, OLD_KEY))


def _slow_upkeep(app: KeyvaultApp) -> tuple[KeyringMaintenance, asyncio.Task[None]]:
    maintenance = _maintenance(app, rate=50)
    return maintenance, asyncio.create_task(maintenance.run())


async def _until(condition: Callable[[Counter[str]], bool], database_url: str, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition(await records_by_key_id(database_url)):
        assert time.monotonic() < deadline, f"no {what} in time"
        await asyncio.sleep(0.1)
