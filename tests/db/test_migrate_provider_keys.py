"""The provider-keys migration over a database filled by the release before it: every key is read
back as the user's openai key (through both routes), the audit chain still verifies, a record
moved to another provider's slot does not open, and rotation rewraps the old records into v3."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from alembic import command
from sqlalchemy import inspect, text

from keyvault.crypto.records import FORMAT_VERSION, Keyring
from keyvault.db.engine import create_engine, create_sessionmaker
from keyvault.db.migrations import alembic_config, upgrade_to_head
from keyvault.master_keys import rotation
from keyvault.web.app import create_app
from tests.audit_support import execute_sql, verify
from tests.conftest import MASTER_KEY, bearer, key_path, make_settings, mint
from tests.keys.test_provider_keys import provider_path
from tests.todays_release import OldEvent, fill_as_todays_release

KEYS = {f"google-oauth2|user-{n:02d}": f"sk-before-providers-{n:02d}-0123456789" for n in range(25)}
KEYS["a/api-keys/anthropic"] = "sk-odd-sub-0123456789"  # a sub that looks like a provider path
EVENTS = [
    OldEvent("put", "ok", "google-oauth2|user-00", 1),
    OldEvent("get", "ok", "google-oauth2|user-00", 1),
    OldEvent("get", "denied_403", "google-oauth2|user-01", None),
]
READER = "api-key:read users:any"


async def _columns(database_url: str, table: str) -> tuple[list[str], list[str]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: (
                    [c["name"] for c in inspect(sync).get_columns(table)],
                    inspect(sync).get_pk_constraint(table)["constrained_columns"],
                )
            )
    finally:
        await engine.dispose()


@pytest.fixture
async def migrated(empty_database_url: str) -> tuple[str, Keyring]:
    root = await fill_as_todays_release(empty_database_url, MASTER_KEY, KEYS, EVENTS)
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    return empty_database_url, Keyring(root)


@pytest.fixture
async def client(migrated: tuple[str, Keyring]) -> AsyncIterator[httpx.AsyncClient]:
    url, keyring = migrated
    app = create_app(make_settings(url, rate_limit=""), keyring=keyring)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as http:
            yield http


async def test_every_key_reads_back_as_the_users_openai_key(
    migrated: tuple[str, Keyring], client: httpx.AsyncClient
) -> None:
    headers = bearer(mint("service", READER))
    for sub, api_key in KEYS.items():
        for path in (key_path(sub), provider_path(sub, "openai")):
            read = await client.get(path, headers=headers)
            assert read.status_code == 200, (sub, path)
            assert (read.json()["api_key"], read.json()["provider"]) == (api_key, "openai")
        assert (
            await client.get(provider_path(sub, "anthropic"), headers=headers)
        ).status_code == 404
    listed = await client.get("/users/google-oauth2%7Cuser-03/api-keys", headers=headers)
    version = sorted(KEYS).index("google-oauth2|user-03") + 1  # as the old release left it
    assert [(k["provider"], k["version"]) for k in listed.json()["keys"]] == [("openai", version)]


async def test_the_schema_keys_records_by_sub_and_provider(migrated: tuple[str, Keyring]) -> None:
    url, _ = migrated
    columns, primary_key = await _columns(url, "api_keys")
    assert primary_key == ["sub", "provider"]
    assert {"provider", "label", "expires_at"} <= set(columns)
    events, _ = await _columns(url, "audit_events")
    assert {"provider", "validation"} <= set(events)


async def test_the_old_audit_chain_verifies_with_the_new_events_after_it(
    migrated: tuple[str, Keyring], client: httpx.AsyncClient
) -> None:
    url, keyring = migrated
    assert (await verify(url, keyring)).intact
    await client.get(
        provider_path("google-oauth2|user-00", "openai"), headers=bearer(mint("service", READER))
    )
    checked = await verify(url, keyring)
    assert (checked.intact, checked.events_checked) == (True, len(EVENTS) + 1)


async def test_an_old_record_moved_to_another_providers_slot_does_not_open(
    migrated: tuple[str, Keyring], client: httpx.AsyncClient
) -> None:
    url, _ = migrated
    await execute_sql(
        url,
        "UPDATE api_keys SET provider = 'anthropic' WHERE sub = :sub",
        sub="google-oauth2|user-05",
    )
    read = await client.get(
        provider_path("google-oauth2|user-05", "anthropic"), headers=bearer(mint("service", READER))
    )
    assert read.status_code == 500
    assert read.json()["type"].endswith("/record-undecryptable")


async def test_rotation_rewraps_the_old_records_into_the_new_format(
    migrated: tuple[str, Keyring], client: httpx.AsyncClient
) -> None:
    url, keyring = migrated
    engine = create_engine(url)
    try:
        report = await rotation.rewrap(create_sessionmaker(engine), keyring, batch_size=7)
        async with engine.connect() as connection:
            formats = set(
                (await connection.execute(text("SELECT format_version FROM api_keys"))).scalars()
            )
    finally:
        await engine.dispose()
    assert (report.rewrapped, report.remaining, formats) == (len(KEYS), {}, {FORMAT_VERSION})
    headers = bearer(mint("service", READER))
    for sub, api_key in KEYS.items():
        assert (await client.get(key_path(sub), headers=headers)).json()["api_key"] == api_key


async def test_downgrading_is_refused_once_this_release_wrote_a_key(
    migrated: tuple[str, Keyring], client: httpx.AsyncClient
) -> None:
    url, _ = migrated
    await client.put(
        provider_path("newcomer", "anthropic"),
        json={"api_key": "sk-new-0123456789"},
        headers=bearer(mint("newcomer", "api-key:write")),
    )
    with pytest.raises(RuntimeError, match="cannot downgrade below provider keys"):
        await asyncio.to_thread(command.downgrade, alembic_config(url), "0004")
    columns, _ = await _columns(url, "api_keys")
    assert "provider" in columns


async def test_a_database_of_old_keys_alone_downgrades_with_its_keys(
    empty_database_url: str,
) -> None:
    await fill_as_todays_release(empty_database_url, MASTER_KEY, KEYS, [])
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    await asyncio.to_thread(command.downgrade, alembic_config(empty_database_url), "0004")
    columns, primary_key = await _columns(empty_database_url, "api_keys")
    assert (primary_key, "provider" in columns) == (["sub"], False)
    engine = create_engine(empty_database_url)
    try:
        async with engine.connect() as connection:
            count = (await connection.execute(text("SELECT count(*) FROM api_keys"))).scalar_one()
    finally:
        await engine.dispose()
    assert count == len(KEYS)
