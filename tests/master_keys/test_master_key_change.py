"""Changing the seal's wrapping key without touching a record: a new MASTER_ENCRYPTION_KEY (the
previous one configured) once the keyring's active root key is random, and a new HSM key named
with KEYVAULT_PKCS11_KEY_LABEL_PREVIOUS. Both databases; one million records in the timing test."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text

from keyvault.crypto.records import FORMAT_VERSION
from keyvault.db.engine import session_scope
from keyvault.db.migrations import upgrade_to_head
from keyvault.master_keys import rotation
from keyvault.master_keys.seals import KeyringUnwrapError
from keyvault.master_keys.unlock import RetiredMasterKeyError
from tests.deployments import (
    NEW_KEY,
    OLD_KEY,
    OTHER_KEY,
    api_key_of,
    database_contents,
    keyring_entries,
    open_all,
    open_sessions,
    sealed_of,
    store_records,
    stored_rows,
)
from tests.master_keys.rotation_support import (
    env_deployment,
    env_settings,
    opened,
    rewrap,
    rotate_root,
)
from tests.softhsm import SoftHsm, keyring_of

SUBS = [f"user-{n:03d}" for n in range(30)]
BULK_RECORDS = 1_000_000
MASTER_KEY_CHANGE_SECONDS = 1.0


async def _api_keys(database_url: str) -> list[tuple[object, ...]]:
    return (await database_contents(database_url))["api_keys"]


async def test_after_a_root_rotation_a_new_master_key_rewraps_only_the_keyring(
    empty_database_url: str,
) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS)
    rotated = await rotate_root(env_settings(empty_database_url, OLD_KEY))
    await rewrap(env_settings(empty_database_url, OLD_KEY), rotated)
    records_before = await _api_keys(empty_database_url)
    wrapped_before = {e.key_id: e.wrapped for e in await keyring_entries(empty_database_url)}

    changed = await opened(env_settings(empty_database_url, NEW_KEY, OLD_KEY))

    assert changed.current == rotated.current
    assert await _api_keys(empty_database_url) == records_before
    wrapped_after = {e.key_id: e.wrapped for e in await keyring_entries(empty_database_url)}
    assert wrapped_after.keys() == wrapped_before.keys()
    assert all(wrapped_after[k] != wrapped_before[k] for k in wrapped_after if wrapped_before[k])
    new_alone = await opened(env_settings(empty_database_url, NEW_KEY))
    assert await open_all(empty_database_url, new_alone) == {s: api_key_of(s) for s in SUBS}
    with pytest.raises(RetiredMasterKeyError):
        await opened(env_settings(empty_database_url, OLD_KEY))


async def test_records_under_the_old_master_keys_root_key_need_it_no_more(
    empty_database_url: str,
) -> None:
    """Not rewrapped yet: the old master key's derived root key is kept wrapped by the new one."""
    derived = await env_deployment(empty_database_url, OLD_KEY, SUBS)
    await rotate_root(env_settings(empty_database_url, OLD_KEY))

    both = await opened(env_settings(empty_database_url, NEW_KEY, OLD_KEY))
    async with open_sessions(empty_database_url) as sessions:
        report = await rotation.keys_report(sessions, both)

    assert report.unneeded_previous == [(1, derived.current.key_id)]
    assert report.role(derived.current.key_id) == "retired root key (in the keyring)"
    new_alone = await opened(env_settings(empty_database_url, NEW_KEY))
    assert await open_all(empty_database_url, new_alone) == {s: api_key_of(s) for s in SUBS}
    assert {e.key_id: e.derived for e in await keyring_entries(empty_database_url)} == {
        derived.current.key_id: False,
        new_alone.current.key_id: False,
    }


async def test_master_key_changes_in_a_row_each_rewrap_the_keyring(
    empty_database_url: str,
) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS)
    await rotate_root(env_settings(empty_database_url, OLD_KEY))
    await opened(env_settings(empty_database_url, NEW_KEY, OLD_KEY))

    third = await opened(env_settings(empty_database_url, OTHER_KEY, NEW_KEY))

    assert await open_all(empty_database_url, third) == {s: api_key_of(s) for s in SUBS}
    assert await open_all(
        empty_database_url, await opened(env_settings(empty_database_url, OTHER_KEY))
    ) == {s: api_key_of(s) for s in SUBS}


async def test_a_master_key_change_with_a_million_records_takes_under_a_second(
    empty_database_url: str,
) -> None:
    """One million rows seeded by one INSERT … SELECT over a generated series (copies of one real
    record's sealed bytes), then the start with a new master key timed: the keyring's rewrap is
    all it does, whatever the number of records."""
    await env_deployment(empty_database_url, OLD_KEY, [])
    rotated = await rotate_root(env_settings(empty_database_url, OLD_KEY))
    await store_records(empty_database_url, rotated, ["real"])
    await _seed_copies(empty_database_url, BULK_RECORDS)
    assert await _count(empty_database_url, rotated.current.key_id) == BULK_RECORDS + 1

    started = time.perf_counter()
    changed = await opened(env_settings(empty_database_url, NEW_KEY, OLD_KEY))
    elapsed = time.perf_counter() - started

    assert elapsed < MASTER_KEY_CHANGE_SECONDS, f"{elapsed:.3f}s"
    new_alone = await opened(env_settings(empty_database_url, NEW_KEY))
    assert new_alone.current == changed.current == rotated.current
    real = (await stored_rows(empty_database_url))["real"]
    assert new_alone.open("real", "openai", sealed_of(real)) == api_key_of("real")


async def _seed_copies(database_url: str, count: int) -> None:
    """`count` rows for the "anthropic" provider, copies of the sealed bytes of sub "real"'s
    openai key (bound to that sub and provider, they open nowhere else)."""
    series = (
        "generate_series(1, :count) AS n"
        if database_url.startswith("postgresql")
        else "(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :count) "
        "SELECT n FROM s)"
    )
    copy = text(
        "INSERT INTO api_keys (sub, provider, format_version, key_id, salt, nonce, ciphertext, "
        "last4, version, created_at, updated_at) "
        f"SELECT 'bulk-' || n, 'anthropic', {FORMAT_VERSION}, r.key_id, r.salt, r.nonce, "
        "r.ciphertext, r.last4, 1, r.created_at, r.updated_at "
        f"FROM {series}, (SELECT * FROM api_keys WHERE sub = 'real') AS r"
    )
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        await session.execute(copy, {"count": count})


async def _count(database_url: str, key_id: str) -> int:
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        result = await session.execute(
            text("SELECT count(*) FROM api_keys WHERE key_id = :k"), {"k": key_id}
        )
        return int(result.scalar_one())


async def test_a_new_hsm_key_rewraps_the_keyring_and_no_record(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    first = await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    await store_records(empty_database_url, first, SUBS)
    records_before = await _api_keys(empty_database_url)
    new_key = softhsm.new_key()

    moved = await keyring_of(
        softhsm.settings(empty_database_url, new_key, pkcs11_key_label_previous=hsm_key)
    )

    assert moved.current == first.current
    assert await _api_keys(empty_database_url) == records_before
    new_alone = await keyring_of(softhsm.settings(empty_database_url, new_key))
    assert await open_all(empty_database_url, new_alone) == {s: api_key_of(s) for s in SUBS}
    with pytest.raises(KeyringUnwrapError, match=repr(hsm_key)):
        await keyring_of(softhsm.settings(empty_database_url, hsm_key))
