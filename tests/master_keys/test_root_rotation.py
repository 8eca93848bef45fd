"""Root-key rotation on both databases: a new random root key active at once, old records still
opening, the rewrap onto it, the removal of an emptied key keeping its audit key, and the races."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from keyvault.cli.audit import verify_audit
from keyvault.crypto.keyring import KeyPurpose
from keyvault.db.engine import session_scope
from keyvault.keys import service
from keyvault.master_keys import keyring_repository, root_rotation
from keyvault.master_keys.keyring import seal_opener
from keyvault.master_keys.root_rotation import RootKeyChangedError, StaleSealError
from keyvault.master_keys.seals import EnvSeal, SealKind
from keyvault.web.app import create_app
from tests.audit_support import stored_events
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
    remove_emptied,
    rewrap,
    rotate_root,
)

SUBS = [f"user-{n:03d}" for n in range(40)]


async def test_rotate_root_adds_a_random_active_key_and_old_records_still_open(
    empty_database_url: str,
) -> None:
    derived = await env_deployment(empty_database_url, OLD_KEY, SUBS)
    settings = env_settings(empty_database_url, OLD_KEY)

    rotated = await rotate_root(settings)

    entries = {entry.key_id: entry for entry in await keyring_entries(empty_database_url)}
    new = entries[rotated.current.key_id]
    assert rotated.current.key_id != derived.current.key_id
    assert (new.active, new.seal, new.derived) == (True, SealKind.env, False)
    assert not entries[derived.current.key_id].active
    reopened = await opened(settings)
    assert reopened.current == rotated.current
    assert await open_all(empty_database_url, reopened) == {s: api_key_of(s) for s in SUBS}


async def test_new_writes_use_the_new_root_key_at_once(empty_database_url: str) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS)
    rotated = await rotate_root(env_settings(empty_database_url, OLD_KEY))

    async with open_sessions(empty_database_url) as sessions, session_scope(sessions) as session:
        await service.put_api_key(session, rotated, "newcomer", "openai", "sk-newcomer-0123456789")

    assert (await stored_rows(empty_database_url))["newcomer"].key_id == rotated.current.key_id


async def test_rewrapped_and_removed_key_leaves_its_audit_key_and_the_chain_verifies(
    empty_database_url: str,
) -> None:
    derived = await env_deployment(empty_database_url, OLD_KEY, SUBS)
    settings = env_settings(empty_database_url, OLD_KEY)
    app = create_app(settings, maintain_keyring=False)
    token = mint("reader", "api-key:read users:any")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as client:
            assert (await client.get(key_path(SUBS[0]), headers=bearer(token))).status_code == 200
    rotated = await rotate_root(settings)

    report = await rewrap(settings, rotated)
    removed = await remove_emptied(settings, rotated)

    assert report.rewrapped == len(SUBS)
    assert removed == [derived.current.key_id]
    entries = {entry.key_id: entry for entry in await keyring_entries(empty_database_url)}
    assert list(entries) == [rotated.current.key_id]
    assert await records_by_key_id(empty_database_url) == {rotated.current.key_id: len(SUBS)}
    async with open_sessions(empty_database_url) as sessions, session_scope(sessions) as session:
        kept = [e for e in await keyring_repository.list_entries(session) if e.purpose != "root"]
    assert [(e.key_id, e.purpose) for e in kept] == [(derived.current.key_id, KeyPurpose.audit)]
    events = await stored_events(empty_database_url)
    assert [e.key_id for e in events] == [derived.current.key_id, rotated.current.key_id]
    assert events[-1].event.action == "rotate"
    verification = await verify_audit(settings)
    assert verification.intact, verification.problem
    assert verification.events_checked == 2


async def test_a_retired_key_is_kept_until_its_grace_has_passed(empty_database_url: str) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS)
    settings = env_settings(empty_database_url, OLD_KEY)
    rotated = await rotate_root(settings)
    await rewrap(settings, rotated)

    async with open_sessions(empty_database_url) as sessions:
        seal = await seal_opener(settings, rotated)()
        removed = await root_rotation.remove_emptied(
            sessions, seal, rotated, retired_before=datetime.now(UTC) - timedelta(minutes=1)
        )

    assert removed == []
    assert len(await keyring_entries(empty_database_url)) == 2


async def test_a_retired_key_still_sealing_records_is_not_removed(empty_database_url: str) -> None:
    derived = await env_deployment(empty_database_url, OLD_KEY, SUBS)
    settings = env_settings(empty_database_url, OLD_KEY)
    rotated = await rotate_root(settings)

    assert await remove_emptied(settings, rotated) == []
    assert derived.current.key_id in {e.key_id for e in await keyring_entries(empty_database_url)}
    assert await open_all(empty_database_url, await opened(settings)) == {
        s: api_key_of(s) for s in SUBS
    }


async def test_two_rotations_from_the_same_key_add_one_key(empty_database_url: str) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS[:3])
    settings = env_settings(empty_database_url, OLD_KEY)
    keyring = await opened(settings)

    async def rotate() -> object:
        async with open_sessions(empty_database_url) as sessions:
            seal = await seal_opener(settings, keyring)()
            try:
                return await root_rotation.rotate_root(sessions, seal, keyring)
            except RootKeyChangedError as error:
                return error

    results = await asyncio.gather(rotate(), rotate())

    assert sum(isinstance(result, RootKeyChangedError) for result in results) == 1
    entries = await keyring_entries(empty_database_url)
    assert len(entries) == 2
    assert sum(entry.active for entry in entries) == 1


async def test_an_instance_with_a_replaced_master_key_cannot_rotate(
    empty_database_url: str,
) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS[:3])
    first = await rotate_root(env_settings(empty_database_url, OLD_KEY))
    await opened(env_settings(empty_database_url, NEW_KEY, OLD_KEY))  # the master key changes
    stale = first.root(first.master_key_ids[0])
    assert stale is not None

    async with open_sessions(empty_database_url) as sessions:
        with pytest.raises(StaleSealError, match="restart with the current configuration"):
            await root_rotation.rotate_root(sessions, EnvSeal(stale), first)


async def test_the_rotation_is_audited_and_reads_after_it_stay_linked(
    empty_database_url: str,
) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS[:1])
    settings = env_settings(empty_database_url, OLD_KEY)
    await rotate_root(settings)
    await rotate_root(settings)

    rotations = [e for e in await stored_events(empty_database_url) if e.event.action == "rotate"]
    assert [e.event.user_agent for e in rotations] == ["keyvault keys rotate-root"] * 2
    assert all(e.event.actor is None and e.event.outcome == "ok" for e in rotations)
    assert (await verify_audit(settings)).intact
