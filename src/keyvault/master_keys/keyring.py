"""Opening the keyring under the configured seal: every root key unwrapped once, at start.

Under the env seal the master keys are unlocked as they always were (master_keys.unlock); entries
the env seal wrapped are unwrapped with the current master key. Under an HSM seal each entry it
wrapped is unwrapped through the token, and entries still derived from a master key open only when
MASTER_ENCRYPTION_KEY is configured too (and matches their verifiers). An HSM seal whose keyring
has no key of its own yet adds one, a fresh random root key, and makes it the active key: on a new
database that is the deployment's first key; on an env-sealed one it is the first step of moving
into the HSM (`keyvault seal migrate`, master_keys.seal_migration, does the rest).

Under the pkcs11 seal with KEYVAULT_PKCS11_KEY_LABEL_PREVIOUS set, a keyring still wrapped by
that previous HSM key is first rewrapped by the current one (master_keys.rekey), in one
transaction: moving to a new HSM key touches no record.

Every refusal is raised before anything is written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.config import Settings
from keyvault.crypto.keyring import KeyPurpose, UnwrapError, accept_unwrapped, new_root_key
from keyvault.crypto.records import Keyring, RootKey, new_deployment_salt
from keyvault.db.engine import session_scope
from keyvault.master_keys import keyring_repository, repository
from keyvault.master_keys.keyring_repository import StoredRootKey
from keyvault.master_keys.pkcs11_seal import open_hsm_seal, open_previous_hsm_seal
from keyvault.master_keys.rekey import rewrap_keyring
from keyvault.master_keys.seals import (
    EnvSeal,
    KeyringUnwrapError,
    Seal,
    SealError,
    SealKind,
    configured_master_keys,
)
from keyvault.master_keys.unlock import (
    ActiveKeyChangedError,
    SealedElsewhereError,
    derive_all,
    refuse_unknown_master_keys,
    unlock,
)

Sessions = async_sessionmaker[AsyncSession]


async def open_keyring(sessions: Sessions, settings: Settings) -> Keyring:
    """The keyring of the seal KEYVAULT_SEAL names; SealError or MasterKeyMismatchError if not."""
    if settings.seal == SealKind.env:
        return await _open_env(sessions, settings)
    seal = open_hsm_seal(settings)
    try:
        previous = open_previous_hsm_seal(settings)
        if previous is not None:
            try:
                await move_to_seal(sessions, previous, seal)
            finally:
                previous.close()
        return await open_sealed(
            sessions, seal, configured_master_keys(settings), settings.kdf_iterations
        )
    finally:
        seal.close()


async def move_to_seal(sessions: Sessions, previous: Seal, seal: Seal) -> int:
    """Rewrap the entries `previous` wrapped under `seal`, one process at a time; how many.

    Nothing is written when `seal` already opens them all, which is every start after the first.
    """
    async with session_scope(sessions) as session:
        entries = await keyring_repository.list_entries(session)
        if all(_opens(seal, entry) for entry in entries if entry.seal == seal.kind):
            return 0
        deployment = await repository.get_deployment(session)
        assert deployment is not None  # a keyring with entries has its deployment row
        await repository.lock_deployment(
            session, deployment.kdf_salt, deployment.kdf_iterations, datetime.now(UTC)
        )
        return await rewrap_keyring(session, previous, seal)


def _opens(seal: Seal, entry: StoredRootKey) -> bool:
    if entry.wrapped is None:
        return True
    try:
        seal.unwrap(entry.wrapped, entry.purpose)
    except UnwrapError:
        return False
    return True


async def open_sealed(
    sessions: Sessions, seal: Seal, master_keys: tuple[str, ...], iterations_for_new: int
) -> Keyring:
    """The keyring with `seal`'s active key current, adding that key when the seal has none yet.

    Two processes adding the first key at once race on the deployment row (a new database) or on
    retiring the same active entries; the loser's write fails and it opens what the winner wrote.
    """
    try:
        return await _open_sealed_once(sessions, seal, master_keys, iterations_for_new)
    except (IntegrityError, ActiveKeyChangedError):
        return await _open_sealed_once(sessions, seal, master_keys, iterations_for_new)


async def _open_env(sessions: Sessions, settings: Settings) -> Keyring:
    derived = await unlock(
        sessions,
        settings.master_key(),
        iterations_for_new=settings.kdf_iterations,
        previous=settings.previous_master_keys(),
    )
    async with session_scope(sessions) as session:
        entries = await keyring_repository.list_root_keys(session)
    if all(entry.derived for entry in entries):
        return derived
    seal = EnvSeal(derived.current)
    opened = {root.key_id: root for root in (derived.current, *derived.previous)}
    unwrapped = unwrap_entries(seal, entries)
    opened.update(unwrapped)
    return _assemble(entries, opened, derived.master_key_ids, frozenset(unwrapped))


async def _open_sealed_once(
    sessions: Sessions, seal: Seal, master_keys: tuple[str, ...], iterations_for_new: int
) -> Keyring:
    async with session_scope(sessions) as session:
        now = datetime.now(UTC)
        entries = await keyring_repository.list_root_keys(session)
        if not _holds_active_key(seal, entries):
            # This seal has no key yet: a new database, or one still under the env seal. One
            # process at a time adds it; the others wait, then find it.
            await repository.lock_deployment(
                session, new_deployment_salt(), iterations_for_new, now
            )
            entries = await keyring_repository.list_root_keys(session)
        opened = await _derived_keys(session, master_keys)
        master_key_ids = tuple(opened)
        unwrapped = unwrap_entries(seal, entries)
        if master_key_ids:
            # Root keys the env seal wrapped (rotations before the move) open with the master key.
            unwrapped.update(unwrap_entries(EnvSeal(opened[master_key_ids[0]]), entries))
        opened.update(unwrapped)
        if _holds_active_key(seal, entries):
            return _assemble(entries, opened, master_key_ids, frozenset(unwrapped))
        active = [entry.key_id for entry in entries if entry.active]
        if not all(key_id in opened for key_id in active):
            raise SealedElsewhereError(SealKind.env)
        if not await keyring_repository.retire_active_root_keys(session, active, now):
            raise ActiveKeyChangedError()
        root, wrapped = new_sealed_root_key(seal)
        await keyring_repository.add_root_key(
            session, root.key_id, seal.kind, wrapped, now, material=root.material
        )
        return Keyring(
            root,
            tuple(opened.values()),
            master_key_ids=master_key_ids,
            sealed_ids=frozenset(unwrapped) | {root.key_id},
        )


def _holds_active_key(seal: Seal, entries: list[StoredRootKey]) -> bool:
    return any(entry.active and entry.seal == seal.kind for entry in entries)


def new_sealed_root_key(seal: Seal) -> tuple[RootKey, bytes]:
    """A random root key and its wrapped form, proven to unwrap again before anything stores it."""
    root = new_root_key()
    wrapped = seal.wrap(root.material)
    try:
        accept_unwrapped(root.key_id, seal.unwrap(wrapped))
    except UnwrapError:
        raise SealError(
            f"the {seal.describe()} wrapped a root key it then could not unwrap; "
            "nothing was written"
        ) from None
    return root, wrapped


async def _derived_keys(session: AsyncSession, master_keys: tuple[str, ...]) -> dict[str, RootKey]:
    """The root keys of the configured master keys, each proven by its verifier.

    None when no master key is configured, or when the deployment never had one (it began under
    this seal). No rotation rules apply here (they are the env seal's): these keys only open
    records and check audit links.
    """
    deployment = await repository.get_deployment(session)
    verifiers = await repository.list_verifiers(session)
    if not master_keys or deployment is None or not verifiers:
        return {}
    roots = await derive_all(master_keys, deployment.kdf_salt, deployment.kdf_iterations)
    refuse_unknown_master_keys(roots, verifiers)
    return {root.key_id: root for root in roots}


def unwrap_entries(seal: Seal, entries: list[StoredRootKey]) -> dict[str, RootKey]:
    """The root keys of the entries `seal` wrapped; KeyringUnwrapError if one does not unwrap."""
    opened = {}
    for entry in entries:
        if entry.wrapped is None or entry.seal != seal.kind:
            continue
        try:
            opened[entry.key_id] = accept_unwrapped(entry.key_id, seal.unwrap(entry.wrapped))
        except UnwrapError:
            raise KeyringUnwrapError(seal, entry.key_id) from None
    return opened


def _assemble(
    entries: list[StoredRootKey],
    opened: dict[str, RootKey],
    master_key_ids: tuple[str, ...],
    sealed_ids: frozenset[str],
) -> Keyring:
    """The active entry's key seals; every other key opened may still open records."""
    active = max(
        (entry for entry in entries if entry.active and entry.key_id in opened),
        key=lambda entry: entry.created_at,
        default=None,
    )
    if active is None:
        raise SealError("the keyring has no active root key this seal opens; nothing was written")
    current = opened[active.key_id]
    return Keyring(
        current,
        tuple(key for key in opened.values() if key is not current),
        master_key_ids=master_key_ids,
        sealed_ids=sealed_ids,
    )


def seal_opener(settings: Settings, keyring: Keyring) -> Callable[[], Awaitable[Seal]]:
    """Opens the configured seal again after start, for a new root key (a rotation, a reload):
    under env from the current master key's root key, which the keyring holds; under pkcs11
    through the token, which is a rare call: never one per request."""
    if settings.seal == SealKind.pkcs11:

        async def hsm() -> Seal:
            return open_hsm_seal(settings)

        return hsm
    master = keyring.root(keyring.master_key_ids[0]) if keyring.master_key_ids else None

    async def env() -> Seal:
        if master is None:
            raise SealError("the keyring was opened without MASTER_ENCRYPTION_KEY")
        return EnvSeal(master)

    return env


async def kept_audit_keys(sessions: Sessions, seal: Seal) -> dict[str, bytes]:
    """The audit keys kept for removed root keys that `seal` wrapped, by key id (for verifying
    the audit events those keys linked)."""
    async with session_scope(sessions) as session:
        entries = await keyring_repository.list_entries(session)
    kept = {}
    for entry in entries:
        if entry.purpose != KeyPurpose.audit or entry.seal != seal.kind or entry.wrapped is None:
            continue
        try:
            kept[entry.key_id] = seal.unwrap(entry.wrapped, KeyPurpose.audit)
        except UnwrapError:
            raise KeyringUnwrapError(seal, entry.key_id) from None
    return kept
