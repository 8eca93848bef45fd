"""Opening the keyring under each seal, on both databases, with a real SoftHSM2 token: a fresh
deployment under the HSM, an env deployment starting its move into it, and every refusal (each
before anything is written)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from keyvault.crypto.keyring import new_root_key
from keyvault.crypto.records import UnknownKeyIdError
from keyvault.db.engine import session_scope
from keyvault.db.migrations import upgrade_to_head
from keyvault.master_keys import keyring_repository, repository
from keyvault.master_keys.seals import EnvSeal, KeyringUnwrapError, SealKind
from keyvault.master_keys.unlock import MasterKeyMismatchError, SealedElsewhereError
from tests.conftest import make_settings
from tests.deployments import (
    NEW_KEY,
    OLD_KEY,
    OTHER_KEY,
    api_key_of,
    create_deployment,
    database_contents,
    keyring_entries,
    keyring_for,
    open_all,
    open_sessions,
    store_records,
)
from tests.softhsm import SoftHsm, keyring_of


async def _fresh(database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, database_url)


async def test_a_fresh_deployment_under_the_hsm_needs_no_master_key(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await _fresh(empty_database_url)
    settings = softhsm.settings(empty_database_url, hsm_key)

    first = await keyring_of(settings)
    await store_records(empty_database_url, first, ["alice", "bob"])
    again = await keyring_of(settings)

    assert again.current.key_id == first.current.key_id
    assert again.previous == ()
    (entry,) = await keyring_entries(empty_database_url)
    assert (entry.key_id, entry.seal, entry.active) == (first.current.key_id, "pkcs11", True)
    assert entry.wrapped is not None
    assert first.current.material not in entry.wrapped
    assert await open_all(empty_database_url, again) == {s: api_key_of(s) for s in ("alice", "bob")}
    async with open_sessions(empty_database_url) as sessions, session_scope(sessions) as session:
        assert await repository.list_verifiers(session) == {}


async def test_concurrent_first_starts_under_the_hsm_agree_on_one_root_key(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await _fresh(empty_database_url)
    settings = softhsm.settings(empty_database_url, hsm_key)
    keyrings = await asyncio.gather(*(keyring_of(settings) for _ in range(5)))
    assert len({keyring.current.key_id for keyring in keyrings}) == 1
    assert len(await keyring_entries(empty_database_url)) == 1


async def test_instances_moving_into_the_hsm_at_once_add_one_root_key(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    settings = softhsm.settings(empty_database_url, hsm_key, MASTER_ENCRYPTION_KEY=OLD_KEY)
    keyrings = await asyncio.gather(*(keyring_of(settings) for _ in range(4)))
    assert len({keyring.current.key_id for keyring in keyrings}) == 1
    seals = sorted(entry.seal for entry in await keyring_entries(empty_database_url))
    assert seals == ["env", "pkcs11"]


async def test_another_hsm_key_does_not_open_the_keyring_and_writes_nothing(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await _fresh(empty_database_url)
    sealed_with = await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    before = await database_contents(empty_database_url)

    with pytest.raises(KeyringUnwrapError) as raised:
        await keyring_of(softhsm.settings(empty_database_url, softhsm.new_key()))

    message = str(raised.value)
    assert "does not unwrap this database's keyring" in message
    assert sealed_with.current.key_id in message
    assert softhsm.pin not in message
    assert await database_contents(empty_database_url) == before


async def test_the_env_seal_is_refused_on_a_keyring_in_the_hsm(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await _fresh(empty_database_url)
    await keyring_of(softhsm.settings(empty_database_url, hsm_key, MASTER_ENCRYPTION_KEY=OLD_KEY))
    before = await database_contents(empty_database_url)

    with pytest.raises(SealedElsewhereError) as raised:
        await keyring_of(make_settings(empty_database_url, MASTER_ENCRYPTION_KEY=OLD_KEY))

    assert "sealed by the pkcs11 seal" in str(raised.value)
    assert "MASTER_ENCRYPTION_KEY alone opens nothing" in str(raised.value)
    assert await database_contents(empty_database_url) == before


async def test_the_hsm_without_the_master_key_is_refused_on_an_env_keyring(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    before = await database_contents(empty_database_url)

    with pytest.raises(SealedElsewhereError, match="sealed by the env seal"):
        await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    with pytest.raises(MasterKeyMismatchError):
        await keyring_of(
            softhsm.settings(empty_database_url, hsm_key, MASTER_ENCRYPTION_KEY=OTHER_KEY)
        )

    assert await database_contents(empty_database_url) == before


async def test_the_hsm_with_the_master_key_adds_the_active_root_key_and_opens_old_records(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    env_keyring = await keyring_for(empty_database_url, OLD_KEY)
    await store_records(empty_database_url, env_keyring, ["alice"])
    settings = softhsm.settings(empty_database_url, hsm_key, MASTER_ENCRYPTION_KEY=OLD_KEY)

    keyring = await keyring_of(settings)
    await store_records(empty_database_url, keyring, ["bob"])

    assert keyring.current.key_id != env_keyring.current.key_id
    assert [key.key_id for key in keyring.previous] == [env_keyring.current.key_id]
    entries = {entry.key_id: entry for entry in await keyring_entries(empty_database_url)}
    assert entries[env_keyring.current.key_id].active is False
    assert entries[keyring.current.key_id].active is True
    assert entries[keyring.current.key_id].seal == "pkcs11"
    assert await open_all(empty_database_url, keyring) == {
        "alice": api_key_of("alice"),
        "bob": api_key_of("bob"),
    }
    # Without the master key the HSM opens what was sealed since, and nothing older.
    hsm_only = await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    assert hsm_only.current == keyring.current
    with pytest.raises(UnknownKeyIdError):
        await open_all(empty_database_url, hsm_only)


async def test_the_env_seal_keeps_one_entry_per_master_key_as_rotation_moves(
    empty_database_url: str,
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    old = await keyring_for(empty_database_url, OLD_KEY)
    (entry,) = await keyring_entries(empty_database_url)
    assert (entry.key_id, entry.seal, entry.wrapped, entry.active) == (
        old.current.key_id,
        "env",
        None,
        True,
    )

    new = await keyring_for(empty_database_url, NEW_KEY, OLD_KEY)

    states = {e.key_id: e.active for e in await keyring_entries(empty_database_url)}
    assert states == {old.current.key_id: False, new.current.key_id: True}


async def test_the_env_seal_opens_random_root_keys_it_wrapped(empty_database_url: str) -> None:
    """Entries the env seal wrapped (random root keys) open with the master key alone."""
    await create_deployment(empty_database_url, OLD_KEY)
    derived = await keyring_for(empty_database_url, OLD_KEY)
    random_key = new_root_key()
    wrapped = EnvSeal(derived.current).wrap(random_key.material)
    async with open_sessions(empty_database_url) as sessions, session_scope(sessions) as session:
        now = datetime.now(UTC)
        assert await keyring_repository.retire_active_root_keys(
            session, [derived.current.key_id], now
        )
        await keyring_repository.add_root_key(
            session, random_key.key_id, SealKind.env, wrapped, now, material=random_key.material
        )

    keyring = await keyring_of(make_settings(empty_database_url, MASTER_ENCRYPTION_KEY=OLD_KEY))

    assert keyring.current == random_key
    assert [key.key_id for key in keyring.previous] == [derived.current.key_id]
