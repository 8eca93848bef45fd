from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyvault.crypto.records import Keyring
from keyvault.db.engine import session_scope
from keyvault.keys import repository, service
from keyvault.legacy_import.importer import (
    ImportReport,
    SeedImportError,
    _store_one,
    import_seed,
    read_seed_rows,
    seed_engine,
)
from keyvault.legacy_import.seed_crypto import SEED_ITERATIONS, WRONG_KEY_REASON
from tests.deployments import (
    NEW_KEY,
    create_deployment,
    keyring_for,
    open_all,
    open_sessions,
    stored_rows,
)
from tests.seed_databases import (
    FAST_ITERATIONS,
    SEED_MASTER_KEY,
    SeedUser,
    create_seed_database,
    drop_seed_database,
    seed_token,
)

KEYS = {f"google-oauth2|{n}": f"sk-proj-seed-{n:03d}-abcdefghijkl" for n in range(25)}


@pytest.fixture
async def vault(empty_database_url: str) -> tuple[str, Keyring]:
    await create_deployment(empty_database_url, NEW_KEY)
    return empty_database_url, await keyring_for(empty_database_url, NEW_KEY)


@pytest.fixture
async def seed_users() -> list[SeedUser]:
    return [SeedUser(sub, key) for sub, key in KEYS.items()]


@pytest.fixture
async def seed_url(backend: str, tmp_path: Path, seed_users: list[SeedUser]) -> AsyncIterator[str]:
    url = await create_seed_database(backend, tmp_path, seed_users)
    yield url
    await drop_seed_database(url)


async def _import(
    seed: str,
    vault: tuple[str, Keyring],
    *,
    master_key: str = SEED_MASTER_KEY,
    iterations: int = FAST_ITERATIONS,
    **options: bool | int,
) -> ImportReport:
    database_url, keyring = vault
    engine = seed_engine(seed)
    try:
        async with open_sessions(database_url) as sessions:
            return await import_seed(
                engine,
                sessions,
                keyring,
                master_key,
                iterations=iterations,
                **options,  # type: ignore[arg-type]
            )
    finally:
        await engine.dispose()


async def _put(vault: tuple[str, Keyring], sub: str, api_key: str) -> None:
    database_url, keyring = vault
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        await service.put_api_key(session, keyring, sub, "openai", api_key)


async def test_every_seed_key_is_sealed_under_the_current_key(
    seed_url: str, vault: tuple[str, Keyring]
) -> None:
    report = await _import(seed_url, vault)
    assert (report.imported, report.skipped, report.kept, report.failures) == (len(KEYS), 0, 0, [])
    assert await open_all(vault[0], vault[1]) == KEYS
    assert {row.key_id for row in (await stored_rows(vault[0])).values()} == {
        vault[1].current.key_id
    }


async def test_seed_keys_become_the_users_openai_keys_only(
    seed_url: str, vault: tuple[str, Keyring]
) -> None:
    await _import(seed_url, vault)
    assert set(await stored_rows(vault[0], "openai")) == set(KEYS)
    assert await stored_rows(vault[0], "anthropic") == {}


async def test_a_users_other_providers_keys_do_not_count_as_the_seeds(
    seed_url: str, vault: tuple[str, Keyring]
) -> None:
    database_url, keyring = vault
    sub = sorted(KEYS)[0]
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        await service.put_api_key(session, keyring, sub, "anthropic", "sk-their-anthropic-0001")
    report = await _import(seed_url, vault)
    assert report.imported == len(KEYS)
    assert await open_all(database_url, keyring, "anthropic") == {sub: "sk-their-anthropic-0001"}


async def test_running_twice_imports_nothing_twice(
    seed_url: str, vault: tuple[str, Keyring]
) -> None:
    await _import(seed_url, vault)
    before = await stored_rows(vault[0])
    again = await _import(seed_url, vault)
    assert (again.imported, again.unchanged, again.kept) == (0, len(KEYS), 0)
    after = await stored_rows(vault[0])
    assert {s: r.version for s, r in after.items()} == {s: r.version for s, r in before.items()}


@pytest.mark.parametrize(
    "seed_users", [[SeedUser("no-key", None), SeedUser("empty-key", None, token="")]]
)
async def test_rows_without_a_key_are_skipped(seed_url: str, vault: tuple[str, Keyring]) -> None:
    report = await _import(seed_url, vault)
    assert (report.imported, report.without_key, report.failures) == (0, 2, [])
    assert await stored_rows(vault[0]) == {}


@pytest.mark.parametrize(
    "seed_users",
    [
        [
            SeedUser(
                "alice", "sk-alice-0123456789", updated_at=datetime.now(UTC) - timedelta(days=9)
            ),
            SeedUser(
                "bob", "sk-bob-from-the-seed-0123", updated_at=datetime.now(UTC) + timedelta(days=1)
            ),
        ]
    ],
)
async def test_newer_vault_value_is_kept_and_older_one_replaced(
    seed_url: str, vault: tuple[str, Keyring]
) -> None:
    await _put(vault, "alice", "sk-alice-newer-in-vault")
    await _put(vault, "bob", "sk-bob-older-in-vault")
    report = await _import(seed_url, vault)
    assert (report.imported, report.kept) == (1, 1)
    assert await open_all(vault[0], vault[1]) == {
        "alice": "sk-alice-newer-in-vault",
        "bob": "sk-bob-from-the-seed-0123",
    }


@pytest.mark.parametrize(
    "seed_users",
    [[SeedUser("alice", "sk-alice-0123456789", updated_at=datetime.now(UTC) - timedelta(days=9))]],
)
async def test_overwrite_replaces_a_newer_vault_value(
    seed_url: str, vault: tuple[str, Keyring]
) -> None:
    await _put(vault, "alice", "sk-alice-newer-in-vault")
    report = await _import(seed_url, vault, overwrite=True)
    assert (report.imported, report.kept) == (1, 0)
    assert await open_all(vault[0], vault[1]) == {"alice": "sk-alice-0123456789"}
    assert (await stored_rows(vault[0]))["alice"].version == 2


@pytest.mark.parametrize(
    "seed_users",
    [
        [
            SeedUser("good-1", "sk-good-1-0123456789"),
            SeedUser("bad-token", None, token="not-a-fernet-token", salt=os.urandom(16)),
            SeedUser("no-salt", None, token=seed_token(SEED_MASTER_KEY, b"s" * 16, "sk-x", 1000)),
            SeedUser(
                "short-salt",
                None,
                token=seed_token(SEED_MASTER_KEY, b"s" * 8, "sk-x", 1000),
                salt=b"s" * 8,
            ),
            SeedUser(
                "other-master",
                None,
                token=seed_token("another-seed-master-key-000000", b"s" * 16, "sk-x", 1000),
                salt=b"s" * 16,
            ),
            SeedUser("good-2", "sk-good-2-0123456789"),
        ]
    ],
)
async def test_corrupt_rows_are_reported_by_sub_and_the_rest_imported(
    seed_url: str, vault: tuple[str, Keyring]
) -> None:
    report = await _import(seed_url, vault)
    assert report.imported == 2
    assert dict(report.failures) == {
        "bad-token": "the token is not URL-safe base64",
        "no-salt": "the salt is missing",
        "short-salt": "the salt is 8 bytes, expected 16",
        "other-master": WRONG_KEY_REASON,
    }
    assert await open_all(vault[0], vault[1]) == {
        "good-1": "sk-good-1-0123456789",
        "good-2": "sk-good-2-0123456789",
    }


async def test_wrong_master_key_for_every_row_stops_before_writing(
    seed_url: str, vault: tuple[str, Keyring]
) -> None:
    canary = "canary-wrong-seed-master-key-4242"
    with pytest.raises(
        SeedImportError, match="none of the first 20 seed keys tried verifies"
    ) as caught:
        await _import(seed_url, vault, master_key=canary)
    assert canary not in str(caught.value)
    assert await stored_rows(vault[0]) == {}


async def test_wrong_iterations_are_taken_for_a_wrong_master_key(
    seed_url: str, vault: tuple[str, Keyring]
) -> None:
    with pytest.raises(SeedImportError, match="--iterations"):
        await _import(seed_url, vault, iterations=FAST_ITERATIONS + 1)


async def test_dry_run_counts_and_writes_nothing(seed_url: str, vault: tuple[str, Keyring]) -> None:
    report = await _import(seed_url, vault, dry_run=True)
    assert report.imported == len(KEYS)
    assert await stored_rows(vault[0]) == {}


async def test_worker_processes_import_the_same_keys(
    seed_url: str, vault: tuple[str, Keyring]
) -> None:
    report = await _import(seed_url, vault, workers=2)
    assert report.imported == len(KEYS)
    assert await open_all(vault[0], vault[1]) == KEYS


async def test_seed_default_iterations_open_seed_tokens(
    backend: str, tmp_path: Path, vault: tuple[str, Keyring]
) -> None:
    url = await create_seed_database(
        backend, tmp_path, [SeedUser("alice", "sk-alice-0123456789")], iterations=SEED_ITERATIONS
    )
    try:
        report = await _import(url, vault, iterations=SEED_ITERATIONS)
    finally:
        await drop_seed_database(url)
    assert report.imported == 1
    assert await open_all(vault[0], vault[1]) == {"alice": "sk-alice-0123456789"}


async def test_imported_record_keeps_the_seed_timestamps(
    backend: str, tmp_path: Path, vault: tuple[str, Keyring]
) -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    url = await create_seed_database(
        backend, tmp_path, [SeedUser("alice", "sk-alice-0123456789", updated_at=when)]
    )
    try:
        await _import(url, vault)
    finally:
        await drop_seed_database(url)
    async with open_sessions(vault[0]) as sessions, session_scope(sessions) as session:
        state = await repository.get_state(session, "alice", "openai")
    assert state is not None
    assert (state.updated_at, state.version) == (when, 1)


@pytest.mark.parametrize(
    "seed_users",
    [[SeedUser("alice", "sk-alice-0123456789", updated_at=datetime.now(UTC) + timedelta(days=1))]],
)
async def test_put_landing_during_the_import_wins(
    seed_url: str, vault: tuple[str, Keyring]
) -> None:
    database_url, keyring = vault
    await _put(vault, "alice", "sk-alice-older-in-vault")
    engine = seed_engine(seed_url)
    try:
        (row,) = await read_seed_rows(engine, None, 10)
    finally:
        await engine.dispose()
    report = ImportReport()
    async with open_sessions(database_url) as sessions:
        async with session_scope(sessions) as session:
            read_by_import = await repository.get_records(session, ["alice"], "openai")
        await _put(vault, "alice", "sk-alice-put-meanwhile")
        async with session_scope(sessions) as session:
            await _store_one(
                session,
                keyring,
                row,
                "sk-alice-0123456789",
                read_by_import["alice"],
                report,
                overwrite=False,
                dry_run=False,
            )
    assert (report.imported, report.kept) == (0, 1)
    assert await open_all(database_url, keyring) == {"alice": "sk-alice-put-meanwhile"}


@pytest.mark.parametrize("url", ["not a url", "mysql://root@localhost/seed"])
def test_unsupported_seed_url_is_one_clear_error_without_the_url(url: str) -> None:
    with pytest.raises(SeedImportError, match="--from") as caught:
        seed_engine(url)
    assert url not in str(caught.value)
