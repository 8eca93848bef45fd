"""Moving an env deployment into the HSM (master_keys.seal_migration) on both databases, with a
real SoftHSM2 token: every record moves and reads back, the old master key alone opens nothing,
an interrupted run resumes without loss, and PUTs during the move keep their values."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from keyvault.audit.trail import verify_stored_chain
from keyvault.cli.audit import verify_audit
from keyvault.crypto.records import Keyring, RecordIntegrityError, RootKey, UnknownKeyIdError
from keyvault.db.engine import create_engine, session_scope
from keyvault.master_keys import repository, seal_migration
from keyvault.master_keys.pkcs11_seal import open_hsm_seal
from keyvault.master_keys.seal_migration import MasterKeyNeededError, MigrationReport
from keyvault.master_keys.unlock import SealedElsewhereError
from keyvault.web.app import create_app
from tests.conftest import bearer, key_path, make_settings, mint
from tests.deployments import (
    OLD_KEY,
    api_key_of,
    create_deployment,
    database_contents,
    keyring_entries,
    keyring_for,
    open_all,
    open_sessions,
    sealed_of,
    store_records,
    stored_rows,
)
from tests.softhsm import SoftHsm, keyring_of

SUBS = [f"user-{n:03d}" for n in range(60)]


class InjectedCrash(Exception):
    pass


async def _env_deployment(database_url: str, subs: list[str] = SUBS) -> Keyring:
    await create_deployment(database_url, OLD_KEY)
    keyring = await keyring_for(database_url, OLD_KEY)
    await store_records(database_url, keyring, subs)
    return keyring


async def _migrate(
    softhsm: SoftHsm,
    database_url: str,
    key_label: str,
    *,
    batch_size: int = 7,
    on_batch: Callable[[int], None] = lambda _records: None,
) -> MigrationReport:
    settings = softhsm.settings(database_url, key_label, MASTER_ENCRYPTION_KEY=OLD_KEY)
    async with open_sessions(database_url) as sessions:
        seal = open_hsm_seal(settings)
        try:
            keyring = await seal_migration.open_for_migration(
                sessions, seal, (OLD_KEY,), iterations_for_new=settings.kdf_iterations
            )
        finally:
            seal.close()
        return await seal_migration.migrate_to(
            sessions,
            keyring,
            lambda: open_hsm_seal(settings),
            batch_size=batch_size,
            on_batch=on_batch,
        )


async def test_after_migrate_every_record_reads_back_and_the_old_master_key_opens_nothing(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    env_keyring = await _env_deployment(empty_database_url)
    expected = {sub: api_key_of(sub) for sub in SUBS}

    report = await _migrate(softhsm, empty_database_url, hsm_key)

    assert (report.rewrapped, report.complete) == (len(SUBS), True)
    assert report.removed == [env_keyring.current.key_id]
    (entry,) = await keyring_entries(empty_database_url)
    assert (entry.seal, entry.key_id) == ("pkcs11", report.current_key_id)
    hsm_only = await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    assert await open_all(empty_database_url, hsm_only) == expected

    # The old master key with a dump of the database: its root key opens no record, and the
    # service refuses to start with it alone.
    async with open_sessions(empty_database_url) as sessions, session_scope(sessions) as session:
        deployment = await repository.get_deployment(session)
    assert deployment is not None
    leaked = Keyring(RootKey.derive(OLD_KEY, deployment.kdf_salt, deployment.kdf_iterations))
    for sub, row in (await stored_rows(empty_database_url)).items():
        assert row.key_id == report.current_key_id
        with pytest.raises(UnknownKeyIdError):
            leaked.open(sub, "openai", sealed_of(row))
        # Nor does relabelling the record with the leaked key's id help.
        relabelled = dataclasses.replace(sealed_of(row), key_id=leaked.current.key_id)
        with pytest.raises(RecordIntegrityError):
            leaked.open(sub, "openai", relabelled)
    with pytest.raises(SealedElsewhereError):
        await keyring_of(make_settings(empty_database_url, MASTER_ENCRYPTION_KEY=OLD_KEY))


async def test_a_migration_that_fails_between_batches_loses_nothing_and_resumes(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    env_keyring = await _env_deployment(empty_database_url)
    batches = itertools.count(1)

    def crash_after_two_batches(_records: int) -> None:
        if next(batches) == 2:
            raise InjectedCrash()

    with pytest.raises(InjectedCrash):
        await _migrate(softhsm, empty_database_url, hsm_key, on_batch=crash_after_two_batches)

    both = await keyring_of(
        softhsm.settings(empty_database_url, hsm_key, MASTER_ENCRYPTION_KEY=OLD_KEY)
    )
    by_key = {row.key_id for row in (await stored_rows(empty_database_url)).values()}
    assert by_key == {both.current.key_id, env_keyring.current.key_id}
    assert await open_all(empty_database_url, both) == {sub: api_key_of(sub) for sub in SUBS}
    assert len(await keyring_entries(empty_database_url)) == 2

    report = await _migrate(softhsm, empty_database_url, hsm_key)

    assert report.complete
    assert report.rewrapped == len(SUBS) - 14
    hsm_only = await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    assert hsm_only.current == both.current
    assert await open_all(empty_database_url, hsm_only) == {sub: api_key_of(sub) for sub in SUBS}


async def test_records_an_env_instance_wrote_afterwards_move_on_the_next_run(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    env_keyring = await _env_deployment(empty_database_url)
    await _migrate(softhsm, empty_database_url, hsm_key)
    # An instance that never restarted still holds the env root key and writes with it.
    await store_records(empty_database_url, env_keyring, ["straggler"])

    with_master_key = await keyring_of(
        softhsm.settings(empty_database_url, hsm_key, MASTER_ENCRYPTION_KEY=OLD_KEY)
    )
    assert (await open_all(empty_database_url, with_master_key))["straggler"]
    report = await _migrate(softhsm, empty_database_url, hsm_key)

    assert (report.rewrapped, report.complete) == (1, True)
    hsm_only = await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    assert (await open_all(empty_database_url, hsm_only))["straggler"] == api_key_of("straggler")


async def test_migrate_needs_the_master_key_and_writes_nothing_without_it(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await _env_deployment(empty_database_url, ["alice"])
    before = await database_contents(empty_database_url)
    settings = softhsm.settings(empty_database_url, hsm_key)
    async with open_sessions(empty_database_url) as sessions:
        seal = open_hsm_seal(settings)
        try:
            with pytest.raises(MasterKeyNeededError):
                await seal_migration.open_for_migration(
                    sessions, seal, (), iterations_for_new=settings.kdf_iterations
                )
        finally:
            seal.close()
    assert await database_contents(empty_database_url) == before


@asynccontextmanager
async def _serving(
    settings_url: str, softhsm: SoftHsm, key_label: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The service as restarted for the move: the pkcs11 seal and the master key both set."""
    app = create_app(softhsm.settings(settings_url, key_label, MASTER_ENCRYPTION_KEY=OLD_KEY))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://keyvault.test"
        ) as client:
            yield client


async def test_puts_during_the_migration_keep_their_values_and_the_audit_chain_holds(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await _env_deployment(empty_database_url)
    token = mint("writer", "api-key:write api-key:read users:any")
    written = {sub: api_key_of(sub) for sub in SUBS}
    async with _serving(empty_database_url, softhsm, hsm_key) as client:

        async def keep_writing() -> None:
            for round_number in range(3):
                for sub in SUBS[::5]:
                    value = f"sk-round-{round_number}-{sub}-0123456789"
                    response = await client.put(
                        key_path(sub), json={"api_key": value}, headers=bearer(token)
                    )
                    assert response.status_code == 200, response.text
                    written[sub] = value

        report, _ = await asyncio.gather(
            _migrate(softhsm, empty_database_url, hsm_key, batch_size=3), keep_writing()
        )
        for sub in SUBS[:3]:
            read = await client.get(key_path(sub), headers=bearer(token))
            assert read.json()["api_key"] == written[sub]

    assert report.complete
    hsm_only = await keyring_of(softhsm.settings(empty_database_url, hsm_key))
    assert await open_all(empty_database_url, hsm_only) == written
    with_master_key = await keyring_of(
        softhsm.settings(empty_database_url, hsm_key, MASTER_ENCRYPTION_KEY=OLD_KEY)
    )
    engine = create_engine(empty_database_url)
    try:
        async with engine.connect() as connection:
            verification = await verify_stored_chain(connection, with_master_key)
    finally:
        await engine.dispose()
    assert verification.intact, verification.problem
    assert verification.events_checked >= 3 * len(SUBS[::5])


async def test_audit_links_from_before_the_move_check_with_the_audit_key_kept_in_the_hsm(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    """The removed env root key leaves its audit key wrapped by the HSM: the old events verify
    without the old master key, and the master key is no longer needed for anything."""
    await _env_deployment(empty_database_url, ["alice"])
    token = mint("alice", "api-key:read")
    env_app = create_app(make_settings(empty_database_url, MASTER_ENCRYPTION_KEY=OLD_KEY))
    async with env_app.router.lifespan_context(env_app):
        transport = httpx.ASGITransport(app=env_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as client:
            assert (await client.get(key_path("alice"), headers=bearer(token))).status_code == 200
    await _migrate(softhsm, empty_database_url, hsm_key)
    async with _serving(empty_database_url, softhsm, hsm_key) as client:
        assert (await client.get(key_path("alice"), headers=bearer(token))).status_code == 200

    hsm_only = softhsm.settings(empty_database_url, hsm_key)
    checked = await verify_audit(hsm_only)
    engine = create_engine(empty_database_url)
    try:
        async with engine.connect() as connection:
            without_kept_keys = await verify_stored_chain(connection, await keyring_of(hsm_only))
    finally:
        await engine.dispose()
    assert checked.intact, checked.problem
    assert checked.events_checked == 2
    assert without_kept_keys.first_bad_seq == 1
