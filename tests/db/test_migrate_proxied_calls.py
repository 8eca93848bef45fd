"""The proxied-calls migration (0008): the events chained before it still verify with the calls
recorded after them, and going back below it is refused once a call's event would be lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import httpx
import pytest
from alembic import command

from keyvault.crypto.records import Keyring
from keyvault.db.migrations import alembic_config, upgrade_to_head
from keyvault.web.app import create_app
from tests.audit_support import stored_events, verify
from tests.conftest import MASTER_KEY, bearer, make_settings, mint
from tests.db.test_migrate_provider_keys import EVENTS, KEYS, _columns
from tests.fake_provider import FakeProvider, fake_provider
from tests.todays_release import fill_as_todays_release
from tests.web.proxy_support import CHAT, proxy_settings

CALL_COLUMNS = {"path", "upstream_status", "duration_ms", "request_bytes", "response_bytes"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with fake_provider() as provider:
        yield provider


@pytest.fixture
async def migrated(empty_database_url: str) -> tuple[str, Keyring]:
    root = await fill_as_todays_release(empty_database_url, MASTER_KEY, KEYS, EVENTS)
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    return empty_database_url, Keyring(root)


@pytest.fixture
async def client(
    migrated: tuple[str, Keyring], fake: FakeProvider
) -> AsyncIterator[httpx.AsyncClient]:
    url, keyring = migrated
    app = create_app(make_settings(url, rate_limit="", **proxy_settings(fake)), keyring=keyring)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as http:
            yield http


async def _proxied_call(client: httpx.AsyncClient) -> None:
    sub = next(iter(KEYS))
    headers = {**bearer(mint("svc", "api-key:use users:any")), "X-Keyvault-User": quote(sub)}
    answer = await client.post("/proxy/openai/chat/completions", json=CHAT, headers=headers)
    assert answer.status_code == 200


async def test_old_events_verify_with_the_calls_recorded_after_them(
    migrated: tuple[str, Keyring], client: httpx.AsyncClient
) -> None:
    url, keyring = migrated
    await _proxied_call(client)
    events = await stored_events(url)
    assert [e.event.action for e in events][-1] == "use"
    assert events[-1].event.path == "chat/completions"
    assert all(e.event.upstream_status is None for e in events[: len(EVENTS)])
    check = await verify(url, keyring)
    assert (check.intact, check.events_checked) == (True, len(events))


async def test_going_back_below_it_is_refused_once_a_call_is_recorded(
    migrated: tuple[str, Keyring], client: httpx.AsyncClient
) -> None:
    url, _ = migrated
    await _proxied_call(client)
    with pytest.raises(RuntimeError, match="cannot downgrade below proxied calls"):
        await asyncio.to_thread(command.downgrade, alembic_config(url), "0007")
    columns, _ = await _columns(url, "audit_events")
    assert set(columns) >= CALL_COLUMNS


async def test_without_calls_it_goes_back_and_forth_keeping_every_event(
    migrated: tuple[str, Keyring],
) -> None:
    url, keyring = migrated
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0007")
    columns, _ = await _columns(url, "audit_events")
    assert not set(columns) & CALL_COLUMNS
    await asyncio.to_thread(upgrade_to_head, url)
    check = await verify(url, keyring)
    assert (check.intact, check.events_checked) == (True, len(EVENTS))
