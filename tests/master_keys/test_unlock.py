from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from keyvault.crypto.records import MIN_KDF_ITERATIONS
from keyvault.db.engine import create_engine, create_sessionmaker, session_scope
from keyvault.db.migrations import upgrade_to_head
from keyvault.db.models import Deployment, MasterKeyVerifier
from keyvault.master_keys.unlock import MasterKeyMismatchError, unlock

FIRST_KEY = "first-master-key-0123456789-abcdefghijklmn"
OTHER_KEY = "other-master-key-0123456789-abcdefghijklmn"


async def _counts(database_url: str) -> tuple[int, int]:
    engine = create_engine(database_url)
    try:
        async with session_scope(create_sessionmaker(engine)) as session:
            deployments = await session.scalar(select(func.count()).select_from(Deployment))
            verifiers = await session.scalar(select(func.count()).select_from(MasterKeyVerifier))
            return int(deployments or 0), int(verifiers or 0)
    finally:
        await engine.dispose()


async def _unlock(database_url: str, master_key: str, iterations: int = MIN_KDF_ITERATIONS) -> str:
    engine = create_engine(database_url)
    try:
        keyring = await unlock(
            create_sessionmaker(engine), master_key, iterations_for_new=iterations
        )
        return keyring.current.key_id
    finally:
        await engine.dispose()


async def test_first_unlock_records_salt_and_verifier(empty_database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    await _unlock(empty_database_url, FIRST_KEY)
    assert await _counts(empty_database_url) == (1, 1)


async def test_same_key_unlocks_again_with_the_same_key_id(empty_database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    first = await _unlock(empty_database_url, FIRST_KEY)
    assert await _unlock(empty_database_url, FIRST_KEY) == first
    assert await _counts(empty_database_url) == (1, 1)


async def test_a_different_master_key_is_refused_and_nothing_is_written(
    empty_database_url: str,
) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    await _unlock(empty_database_url, FIRST_KEY)

    with pytest.raises(MasterKeyMismatchError) as raised:
        await _unlock(empty_database_url, OTHER_KEY)

    assert "does not match" in str(raised.value)
    assert OTHER_KEY not in str(raised.value)
    assert await _counts(empty_database_url) == (1, 1)


async def test_stored_iteration_count_wins_over_a_changed_setting(empty_database_url: str) -> None:
    """Raising the configured count later must not make existing records unreadable."""
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    original = await _unlock(empty_database_url, FIRST_KEY, iterations=MIN_KDF_ITERATIONS)
    assert (
        await _unlock(empty_database_url, FIRST_KEY, iterations=MIN_KDF_ITERATIONS + 1) == original
    )


async def test_concurrent_first_starts_agree_on_one_deployment(empty_database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    key_ids = await asyncio.gather(*(_unlock(empty_database_url, FIRST_KEY) for _ in range(3)))
    assert len(set(key_ids)) == 1
    assert await _counts(empty_database_url) == (1, 1)
