from __future__ import annotations

import asyncio
import itertools

import pytest

from keyvault.db.engine import session_scope
from keyvault.master_keys import repository
from keyvault.master_keys.unlock import MasterKeyMismatchError, UnknownPreviousKeyError, unlock
from tests.deployments import (
    CHEAP_ITERATIONS,
    NEW_KEY,
    OLD_KEY,
    OTHER_KEY,
    create_deployment,
    database_contents,
    keyring_for,
    open_sessions,
)


async def _verifier_key_ids(database_url: str) -> set[str]:
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        return set(await repository.list_verifiers(session))


async def test_new_key_is_accepted_when_the_old_one_is_among_previous_keys(
    empty_database_url: str,
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    keyring = await keyring_for(empty_database_url, NEW_KEY, OLD_KEY)
    assert keyring.previous[0].key_id != keyring.current.key_id
    assert keyring.key_ids == {keyring.current.key_id, keyring.previous[0].key_id}
    assert keyring.current.key_id in await _verifier_key_ids(empty_database_url)


async def test_rotated_key_is_accepted_alone_on_later_starts(empty_database_url: str) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    await keyring_for(empty_database_url, NEW_KEY, OLD_KEY)
    keyring = await keyring_for(empty_database_url, NEW_KEY)
    assert keyring.previous == ()


async def test_unknown_key_is_refused_even_with_previous_keys_configured(
    empty_database_url: str,
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    before = await _verifier_key_ids(empty_database_url)
    with pytest.raises(MasterKeyMismatchError) as caught:
        await keyring_for(empty_database_url, NEW_KEY)
    assert NEW_KEY not in str(caught.value)
    assert "\n" not in str(caught.value)
    assert await _verifier_key_ids(empty_database_url) == before


async def test_previous_key_this_database_never_had_is_refused(empty_database_url: str) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    before = await _verifier_key_ids(empty_database_url)
    with pytest.raises(UnknownPreviousKeyError, match="previous master key #2") as caught:
        await keyring_for(empty_database_url, NEW_KEY, OLD_KEY, OTHER_KEY)
    assert OTHER_KEY not in str(caught.value)
    assert await _verifier_key_ids(empty_database_url) == before


async def test_records_sealed_under_a_previous_key_still_open(empty_database_url: str) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    old = await keyring_for(empty_database_url, OLD_KEY)
    sealed = old.seal("alice", "openai", "sk-alice-0123456789")
    rotated = await keyring_for(empty_database_url, NEW_KEY, OLD_KEY)
    assert rotated.open("alice", "openai", sealed) == "sk-alice-0123456789"
    assert rotated.seal("alice", "openai", "x").key_id == rotated.current.key_id


async def test_two_processes_rotating_at_once_both_unlock(empty_database_url: str) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    async with (
        open_sessions(empty_database_url) as first,
        open_sessions(empty_database_url) as second,
    ):
        keyrings = await asyncio.gather(
            unlock(first, NEW_KEY, iterations_for_new=CHEAP_ITERATIONS, previous=(OLD_KEY,)),
            unlock(second, NEW_KEY, iterations_for_new=CHEAP_ITERATIONS, previous=(OLD_KEY,)),
        )
    assert keyrings[0].current.key_id == keyrings[1].current.key_id


async def test_retired_key_alone_is_refused_after_a_rotation(empty_database_url: str) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    await keyring_for(empty_database_url, NEW_KEY, OLD_KEY)
    with pytest.raises(MasterKeyMismatchError, match="retired by a rotation") as caught:
        await keyring_for(empty_database_url, OLD_KEY)
    assert OLD_KEY not in str(caught.value)


async def test_returning_to_a_retired_key_needs_the_newer_one_as_previous(
    empty_database_url: str,
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    await keyring_for(empty_database_url, NEW_KEY, OLD_KEY)
    back = await keyring_for(empty_database_url, OLD_KEY, NEW_KEY)
    assert (await keyring_for(empty_database_url, OLD_KEY)).current.key_id == back.current.key_id
    with pytest.raises(MasterKeyMismatchError, match="retired"):
        await keyring_for(empty_database_url, NEW_KEY)


async def _retire(database_url: str, *keys: str) -> None:
    """A deployment whose master keys were, in order, `keys`: every one but the last retired."""
    await create_deployment(database_url, keys[0])
    for older, newer in itertools.pairwise(keys):
        await keyring_for(database_url, newer, older)


async def test_a_retired_key_as_previous_does_not_prove_a_rotation(
    empty_database_url: str,
) -> None:
    await _retire(empty_database_url, OLD_KEY, NEW_KEY)
    before = await database_contents(empty_database_url)
    with pytest.raises(MasterKeyMismatchError, match="active master key") as caught:
        await keyring_for(empty_database_url, OTHER_KEY, OLD_KEY)
    message = str(caught.value)
    assert "\n" not in message
    assert all(key not in message for key in (OLD_KEY, NEW_KEY, OTHER_KEY))
    assert await database_contents(empty_database_url) == before
    assert (await keyring_for(empty_database_url, NEW_KEY)).previous == ()


async def test_returning_to_a_retired_key_with_another_retired_key_as_previous_is_refused(
    empty_database_url: str,
) -> None:
    await _retire(empty_database_url, OLD_KEY, NEW_KEY, OTHER_KEY)
    before = await database_contents(empty_database_url)
    with pytest.raises(MasterKeyMismatchError, match="retired by a rotation"):
        await keyring_for(empty_database_url, OLD_KEY, NEW_KEY)
    assert await database_contents(empty_database_url) == before


async def test_returning_to_a_retired_key_with_the_active_one_as_previous_is_accepted(
    empty_database_url: str,
) -> None:
    await _retire(empty_database_url, OLD_KEY, NEW_KEY, OTHER_KEY)
    back = await keyring_for(empty_database_url, OLD_KEY, OTHER_KEY)
    assert (await keyring_for(empty_database_url, OLD_KEY)).current.key_id == back.current.key_id


async def test_active_key_may_list_retired_keys_as_previous(empty_database_url: str) -> None:
    await _retire(empty_database_url, OLD_KEY, NEW_KEY)
    before = await database_contents(empty_database_url)
    keyring = await keyring_for(empty_database_url, NEW_KEY, OLD_KEY)
    assert len(keyring.previous) == 1
    assert await database_contents(empty_database_url) == before


async def test_two_different_rotations_at_once_leave_one_active_key(
    empty_database_url: str,
) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    async with (
        open_sessions(empty_database_url) as first,
        open_sessions(empty_database_url) as second,
    ):
        outcomes = await asyncio.gather(
            unlock(first, NEW_KEY, iterations_for_new=CHEAP_ITERATIONS, previous=(OLD_KEY,)),
            unlock(second, OTHER_KEY, iterations_for_new=CHEAP_ITERATIONS, previous=(OLD_KEY,)),
            return_exceptions=True,
        )
    winners = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    losers = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(winners) == 1, outcomes
    assert isinstance(losers[0], MasterKeyMismatchError), outcomes
    async with open_sessions(empty_database_url) as sessions, session_scope(sessions) as session:
        active = await repository.active_key_ids(session)
    assert active == {winners[0].current.key_id}
