"""The recovery kit, on both databases: a full recovery drill under each seal (deployment made, kit
made, master key or HSM key thrown away, recovered with K shares onto a new one, every record
readable), what a kit covers, and every refusal (nothing written, no share quoted)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import shamir_mnemonic

from keyvault.cli.audit import verify_audit
from keyvault.config import Settings
from keyvault.crypto.recovery import new_recovery_secret
from keyvault.db.migrations import upgrade_to_head
from keyvault.master_keys import recovery
from keyvault.master_keys.keyring import seal_opener
from keyvault.master_keys.recovery import RecoveryError, ShareSet
from keyvault.master_keys.seals import KeyringUnwrapError
from keyvault.master_keys.unlock import MasterKeyMismatchError, RetiredMasterKeyError
from tests.audit_support import stored_events
from tests.deployments import (
    NEW_KEY,
    OLD_KEY,
    OTHER_KEY,
    api_key_of,
    database_contents,
    keyring_entries,
    open_all,
    open_sessions,
    store_records,
)
from tests.master_keys.rotation_support import (
    env_deployment,
    env_settings,
    opened,
    remove_emptied,
    rewrap,
    rotate_root,
)
from tests.softhsm import SoftHsm, keyring_of

SUBS = [f"user-{n:03d}" for n in range(25)]
LATER = [f"later-{n:03d}" for n in range(5)]


async def _make_kit(settings: Settings, shares: int = 5, threshold: int = 3) -> ShareSet:
    async with open_sessions(settings.database_url.get_secret_value()) as sessions:
        keyring = await opened(settings)
        seal = await seal_opener(settings, keyring)()
        try:
            return await recovery.make_kit(
                sessions, seal, keyring, shares=shares, threshold=threshold
            )
        finally:
            seal.close()


async def _recover(settings: Settings, shares: ShareSet) -> recovery.Recovered:
    async with open_sessions(settings.database_url.get_secret_value()) as sessions:
        return await recovery.recover(sessions, settings, shares)


def _some(kit: ShareSet, *positions: int) -> ShareSet:
    return ShareSet(tuple(kit.mnemonics[p] for p in positions))


def _everything() -> dict[str, str]:
    return {sub: api_key_of(sub) for sub in (*SUBS, *LATER)}


async def test_a_lost_master_key_is_recovered_onto_a_new_one_with_k_shares(
    empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Records under the master key's own derived root key, and under a random one after it.
    await env_deployment(empty_database_url, OLD_KEY, SUBS)
    rotated = await rotate_root(env_settings(empty_database_url, OLD_KEY))
    await store_records(empty_database_url, rotated, LATER)
    caplog.set_level(logging.DEBUG)
    kit = await _make_kit(env_settings(empty_database_url, OLD_KEY))
    # OLD_KEY is thrown away: the new key alone opens nothing yet.
    new_only = env_settings(empty_database_url, NEW_KEY)
    with pytest.raises(MasterKeyMismatchError):
        await opened(new_only)

    recovered = await _recover(new_only, _some(kit, 4, 0, 2))

    assert (recovered.seal, recovered.root_keys, recovered.audit_keys) == ("env", 3, 0)
    keyring = await opened(new_only)
    assert keyring.current.key_id == recovered.current_key_id
    assert await open_all(empty_database_url, keyring) == _everything()
    with pytest.raises(RetiredMasterKeyError):
        await opened(env_settings(empty_database_url, OLD_KEY))
    verification = await verify_audit(new_only)
    assert verification.intact, verification.problem
    actions = [e.event.action for e in await stored_events(empty_database_url)]
    assert actions == ["rotate", "recovery_kit", "recover"]
    for mnemonic in kit.mnemonics:
        assert mnemonic not in caplog.text
        assert " ".join(mnemonic.split()[3:7]) not in caplog.text


async def test_a_dead_hsm_is_recovered_onto_a_new_hsm_key(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    first = softhsm.settings(empty_database_url, hsm_key)
    await store_records(empty_database_url, await keyring_of(first), SUBS)
    await store_records(empty_database_url, await keyring_of(first), LATER, provider="anthropic")
    kit = await _make_kit(first, shares=3, threshold=2)
    replacement = softhsm.settings(empty_database_url, softhsm.new_key())
    with pytest.raises(KeyringUnwrapError):
        await keyring_of(replacement)

    recovered = await _recover(replacement, _some(kit, 2, 1))

    keyring = await keyring_of(replacement)
    assert recovered.seal == "pkcs11"
    assert await open_all(empty_database_url, keyring) == {s: api_key_of(s) for s in SUBS}
    assert await open_all(empty_database_url, keyring, "anthropic") == {
        s: api_key_of(s) for s in LATER
    }
    assert (await verify_audit(replacement)).intact


async def test_a_lost_master_key_can_be_recovered_into_an_hsm(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS)
    kit = await _make_kit(env_settings(empty_database_url, OLD_KEY), shares=2, threshold=2)
    into_hsm = softhsm.settings(empty_database_url, hsm_key)

    await _recover(into_hsm, kit)

    assert await open_all(empty_database_url, await keyring_of(into_hsm)) == {
        s: api_key_of(s) for s in SUBS
    }
    assert {entry.seal for entry in await keyring_entries(empty_database_url)} == {"pkcs11"}


async def test_the_audit_key_of_a_removed_root_key_is_recovered_too(
    empty_database_url: str,
) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS)
    settings = env_settings(empty_database_url, OLD_KEY)
    rotated = await rotate_root(settings)
    await rewrap(settings, rotated)
    assert await remove_emptied(settings, rotated)
    kit = await _make_kit(settings, shares=3, threshold=2)

    recovered = await _recover(env_settings(empty_database_url, NEW_KEY), _some(kit, 0, 1))

    assert (recovered.root_keys, recovered.audit_keys) == (2, 1)
    assert (await verify_audit(env_settings(empty_database_url, NEW_KEY))).intact


async def test_root_keys_added_after_the_kit_are_in_it(empty_database_url: str) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS)
    settings = env_settings(empty_database_url, OLD_KEY)
    kit = await _make_kit(settings, shares=3, threshold=2)
    rotated = await rotate_root(settings)
    await store_records(empty_database_url, rotated, LATER)

    await _recover(env_settings(empty_database_url, NEW_KEY), _some(kit, 0, 2))

    keyring = await opened(env_settings(empty_database_url, NEW_KEY))
    assert await open_all(empty_database_url, keyring) == _everything()


async def test_a_new_kit_makes_the_old_shares_worthless(empty_database_url: str) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS[:2])
    settings = env_settings(empty_database_url, OLD_KEY)
    old_kit = await _make_kit(settings, shares=3, threshold=2)
    await _make_kit(settings, shares=3, threshold=2)
    before = await database_contents(empty_database_url)

    with pytest.raises(RecoveryError, match="not of this database's recovery kit"):
        await _recover(env_settings(empty_database_url, NEW_KEY), _some(old_kit, 0, 1))

    assert await database_contents(empty_database_url) == before


@pytest.mark.parametrize("which", ["too few", "two kits", "repeated", "mistyped"])
async def test_shares_that_do_not_recover_write_nothing_and_quote_no_share(
    empty_database_url: str, which: str
) -> None:
    await env_deployment(empty_database_url, OLD_KEY, SUBS[:2])
    kit = await _make_kit(env_settings(empty_database_url, OLD_KEY))
    other = await _make_kit(env_settings(empty_database_url, OLD_KEY))
    words = kit.mnemonics[2].split()
    mistyped = " ".join([*words[:5], words[6], words[5], *words[7:]])
    shares = {
        "too few": _some(kit, 0, 1),
        "two kits": ShareSet((kit.mnemonics[0], kit.mnemonics[1], other.mnemonics[2])),
        "repeated": ShareSet((kit.mnemonics[0], kit.mnemonics[1], kit.mnemonics[1])),
        "mistyped": ShareSet((kit.mnemonics[0], kit.mnemonics[1], mistyped)),
    }[which]
    before = await database_contents(empty_database_url)

    with pytest.raises(RecoveryError) as raised:
        await _recover(env_settings(empty_database_url, NEW_KEY), shares)

    assert await database_contents(empty_database_url) == before
    for mnemonic in shares.mnemonics:
        words = mnemonic.split()
        for start in range(len(words) - 2):
            assert " ".join(words[start : start + 3]) not in str(raised.value)


async def test_a_kit_is_refused_while_a_root_key_is_not_open(empty_database_url: str) -> None:
    """A master-key rotation from before root keys were random left records under the old master
    key's derived key: without that key configured, a kit could not recover them."""
    derived = await env_deployment(empty_database_url, OLD_KEY, SUBS[:2])
    await opened(env_settings(empty_database_url, NEW_KEY, OLD_KEY))
    before = await database_contents(empty_database_url)

    with pytest.raises(RecoveryError, match=derived.current.key_id):
        await _make_kit(env_settings(empty_database_url, NEW_KEY))

    assert await database_contents(empty_database_url) == before
    assert await _make_kit(env_settings(empty_database_url, NEW_KEY, OLD_KEY))


async def test_recovery_without_a_kit_is_refused(empty_database_url: str) -> None:
    await env_deployment(empty_database_url, OLD_KEY, [])
    kit_elsewhere = await _make_kit_in_another_deployment(empty_database_url)
    with pytest.raises(RecoveryError, match="no recovery kit"):
        await _recover(env_settings(empty_database_url, OTHER_KEY), kit_elsewhere)


async def _make_kit_in_another_deployment(database_url: str) -> ShareSet:
    (mnemonics,) = shamir_mnemonic.generate_mnemonics(1, [(2, 2)], new_recovery_secret())
    return ShareSet(tuple(mnemonics))


@pytest.mark.parametrize(("shares", "threshold"), [(3, 1), (2, 3), (17, 2), (0, 0)], ids=str)
def test_impossible_splits_are_refused(shares: int, threshold: int) -> None:
    with pytest.raises(RecoveryError):
        recovery.check_split(shares, threshold)


def test_a_share_set_shows_no_share() -> None:
    shares = ShareSet(("first share words", "second share words"))
    assert "share words" not in repr(shares)
