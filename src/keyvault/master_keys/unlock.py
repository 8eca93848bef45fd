"""Unlocking the deployment under the env seal: derive the root key once and prove it is the one
the data was sealed with. The keyring's entries for derived keys follow the verifiers.

A master-key rotation rewraps the keyring's wrapped entries under the new master key's wrapping
key in the same transaction as the verifiers change. While the active root key is itself derived
from a master key (a keyring that never had a root-key rotation), the new master key's derived
key becomes the active one and the records move onto it (`keyvault rotate`, or the service's
rewrap). Once the active root key is random, the rotation is the keyring's rewrap alone: the
records stay as they are, and the derived keys still holding records are kept wrapped, so the old
master key is needed no more.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.crypto.records import Keyring, RootKey, new_deployment_salt
from keyvault.db.engine import session_scope
from keyvault.master_keys import keyring_repository, repository
from keyvault.master_keys.rekey import rewrap_keyring
from keyvault.master_keys.seals import EnvSeal, SealError, SealKind


class MasterKeyMismatchError(Exception):
    def __init__(
        self,
        message: str = "the master key does not match the one this database was created with; "
        "nothing was written",
    ) -> None:
        super().__init__(message)


class UnknownPreviousKeyError(MasterKeyMismatchError):
    """A retired key this deployment never used: most likely a typo that would hide real records."""

    def __init__(self, position: int) -> None:
        super().__init__(
            f"previous master key #{position} was never a master key of this database; "
            "nothing was written"
        )


class RotationNotProvenError(MasterKeyMismatchError):
    """A new current key whose previous keys are all retired ones: anyone who kept an old key has those."""

    def __init__(self) -> None:
        super().__init__(
            "no previous master key is the database's active master key; a rotation needs the "
            "key it replaces in MASTER_ENCRYPTION_KEY_PREVIOUS; nothing was written"
        )


class RetiredMasterKeyError(MasterKeyMismatchError):
    def __init__(self) -> None:
        super().__init__(
            "the master key was retired by a rotation; to return to it, configure the database's "
            "active master key in MASTER_ENCRYPTION_KEY_PREVIOUS; nothing was written"
        )


class ActiveKeyChangedError(MasterKeyMismatchError):
    """Another process rotated between this one's reading the verifiers and its rotating."""

    def __init__(self) -> None:
        super().__init__(
            "the active master key changed while this process was starting; start it again; "
            "nothing was written"
        )


class SealedElsewhereError(SealError):
    """The keyring's active root key is wrapped by another seal than the configured one."""

    def __init__(self, seal: str) -> None:
        if seal == SealKind.env:
            advice = (
                "its root keys come from MASTER_ENCRYPTION_KEY: set it as well (see docs/seals.md)"
            )
        else:
            advice = (
                f"set KEYVAULT_SEAL={seal} and its settings; MASTER_ENCRYPTION_KEY alone opens "
                "nothing"
            )
        super().__init__(
            f"this database's keyring is sealed by the {seal} seal; {advice}; nothing was written"
        )


async def refuse_other_seal(session: AsyncSession, configured: SealKind) -> bool:
    """SealedElsewhereError if another seal holds the keyring; whether the schema has one."""
    if not await keyring_repository.has_keyring(session):
        return False
    seal = await keyring_repository.active_seal(session)
    if seal is not None and seal != configured:
        raise SealedElsewhereError(seal)
    return True


async def unlock(
    sessions: async_sessionmaker[AsyncSession],
    master_key: str,
    *,
    iterations_for_new: int,
    previous: tuple[str, ...] = (),
) -> Keyring:
    """The keyring for this deployment, creating its salt and verifier on first use.

    One key is active: the one whose verifier is not retired. Any other current key (new, or
    retired) is accepted only as a rotation proven by the active key being among the `previous`
    keys, and every previous key must match a verifier. The new key then becomes the active one
    (its verifier recorded, the replaced one retired), so later starts accept it alone and refuse
    the retired key alone.

    Two processes starting on an empty database race to insert the same row, and two rotating at
    once race to retire the same active key; the loser's write fails (primary key, or the
    compare-and-swap) and it tries once more against what the winner wrote.
    """
    try:
        return await _unlock_once(sessions, master_key, iterations_for_new, previous)
    except (IntegrityError, ActiveKeyChangedError):
        return await _unlock_once(sessions, master_key, iterations_for_new, previous)


async def check_before_migration(
    sessions: async_sessionmaker[AsyncSession], seal: SealKind, master_keys: tuple[str, ...]
) -> None:
    """Refuse what `unlock` (or opening the keyring under `seal`) would refuse, before any
    migration runs; write nothing.

    It applies the same rules as `unlock` on a database of any age: before the schema knew
    retirement, every verifier is an active key; before it knew the keyring, the env seal held it.
    Under another seal, configured master keys need only match verifiers, and a database still
    under the env seal needs them.
    """
    async with sessions() as session:
        active_seal = await keyring_repository.active_seal(session) or SealKind.env
        deployment = await repository.get_deployment(session)
        verifiers = await repository.list_verifiers(session)
        active = await repository.active_key_ids(session)
    if deployment is None:
        return
    if seal == SealKind.env:
        if active_seal != SealKind.env:
            raise SealedElsewhereError(active_seal)
        root, *olds = await derive_all(master_keys, deployment.kdf_salt, deployment.kdf_iterations)
        _replaced_by_rotation(root, olds, verifiers, active)
        return
    if active_seal == SealKind.env and not master_keys:
        raise SealedElsewhereError(SealKind.env)
    if master_keys and verifiers:
        roots = await derive_all(master_keys, deployment.kdf_salt, deployment.kdf_iterations)
        refuse_unknown_master_keys(roots, verifiers)


def refuse_unknown_master_keys(roots: tuple[RootKey, ...], verifiers: dict[str, bytes]) -> None:
    """Outside the env seal master keys only open records: each must be one this database had."""
    for position, root in enumerate(roots):
        if not root.matches(verifiers.get(root.key_id, b"")):
            raise UnknownPreviousKeyError(position) if position else MasterKeyMismatchError()


async def derive_all(
    master_keys: tuple[str, ...], salt: bytes, iterations: int
) -> tuple[RootKey, ...]:
    """PBKDF2 releases the GIL: threads derive the keys side by side and keep the loop responsive."""
    return tuple(
        await asyncio.gather(
            *(asyncio.to_thread(RootKey.derive, key, salt, iterations) for key in master_keys)
        )
    )


async def _unlock_once(
    sessions: async_sessionmaker[AsyncSession],
    master_key: str,
    iterations_for_new: int,
    previous: tuple[str, ...],
) -> Keyring:
    async with session_scope(sessions) as session:
        # A schema from before the keyring has only verifiers (tests set up such databases).
        has_keyring = await refuse_other_seal(session, SealKind.env)
        now = datetime.now(UTC)
        deployment = await repository.get_deployment(session)
        if deployment is None:
            salt, iterations = new_deployment_salt(), iterations_for_new
            await repository.create_deployment(session, salt, iterations, now)
        else:
            salt, iterations = deployment.kdf_salt, deployment.kdf_iterations
        root, *olds = await derive_all((master_key, *previous), salt, iterations)
        verifiers = await repository.list_verifiers(session)
        master_key_ids = (root.key_id, *(old.key_id for old in olds))
        if not verifiers and not olds:
            await repository.add_verifier(session, root.key_id, root.verifier(), now)
            if has_keyring:
                await keyring_repository.add_root_key(
                    session, root.key_id, SealKind.env, None, now, material=root.material
                )
            return Keyring(root, master_key_ids=master_key_ids)
        active = await repository.active_key_ids(session)
        replaced = _replaced_by_rotation(root, olds, verifiers, active)
        if replaced is not None:
            if not await repository.replace_active_verifier(
                session, replaced, root.key_id, root.verifier(), now
            ):
                raise ActiveKeyChangedError()
            if has_keyring:
                (replaced_root,) = (old for old in olds if old.key_id == replaced)
                await _rekey(session, replaced_root, root, olds, now)
        return Keyring(root, tuple(olds), master_key_ids=master_key_ids)


async def _rekey(
    session: AsyncSession, replaced: RootKey, root: RootKey, olds: list[RootKey], now: datetime
) -> None:
    """The keyring's side of a master-key rotation from `replaced` to `root` (see the module)."""
    await repository.lock_keyring(session)
    entries = await keyring_repository.list_root_keys(session)
    active = next((entry for entry in entries if entry.active), None)
    random_active = active is not None and not active.derived
    derived = {key.key_id: key for key in (root, *olds)} if random_active else {}
    await rewrap_keyring(session, EnvSeal(replaced), EnvSeal(root), derived=derived)
    if not random_active:
        await keyring_repository.activate_env_root_key(
            session, root.key_id, now, material=root.material
        )


def _replaced_by_rotation(
    root: RootKey, olds: list[RootKey], verifiers: dict[str, bytes], active: set[str]
) -> str | None:
    """None when `root` is an active key; else the active key id that a previous key proves it replaces.

    Only the active key proves a rotation: a retired key is exactly what someone who kept an old
    configuration still has, and letting it re-key the deployment would lock the operators out.
    Every other combination raises, before anything is written.
    """
    for position, old in enumerate(olds, start=1):
        if not old.matches(verifiers.get(old.key_id, b"")):
            raise UnknownPreviousKeyError(position)
    if root.key_id in verifiers and not root.matches(verifiers[root.key_id]):
        raise MasterKeyMismatchError()
    if root.key_id in active:
        return None
    proof = next((old.key_id for old in olds if old.key_id in active), None)
    if proof is not None:
        return proof
    if root.key_id in verifiers:
        raise RetiredMasterKeyError()
    if olds:
        raise RotationNotProvenError()
    raise MasterKeyMismatchError()
