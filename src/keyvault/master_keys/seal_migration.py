"""Moving a deployment from the env seal into an HSM.

`migrate_to` opens the keyring with both the master key and the HSM seal, which adds a random
root key wrapped by the HSM as the active key if no instance has yet; rewraps every record onto
it (master_keys.rotation: batch by batch, resumable, a compare-and-swap against concurrent PUTs);
then removes the entries derived from the master key, once no record is sealed under them,
keeping their audit keys wrapped by the HSM (master_keys.root_rotation), so the audit events they
linked stay verifiable without the master key. From then on the master key alone opens nothing
in this database. Run again, it carries on where it
stopped, and rewraps records that an instance still on the env seal wrote in the meantime.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.crypto.records import Keyring
from keyvault.db.engine import session_scope
from keyvault.master_keys import keyring_repository, root_rotation, rotation
from keyvault.master_keys.keyring import open_sealed
from keyvault.master_keys.rekey import rewrap_keyring
from keyvault.master_keys.seals import EnvSeal, Seal, SealError, SealKind

Sessions = async_sessionmaker[AsyncSession]

# Rewrap passes before giving up on records that keep arriving under a derived key: one pass
# does the work; a later one takes what instances not yet on the new seal wrote meanwhile.
REWRAP_PASSES = 3


class MasterKeyNeededError(SealError):
    def __init__(self) -> None:
        super().__init__(
            "`keyvault seal migrate` needs MASTER_ENCRYPTION_KEY, the key the records are sealed "
            "under now, besides the pkcs11 settings; nothing was written"
        )


@dataclass(slots=True)
class MigrationReport:
    current_key_id: str
    rewrapped: int = 0
    changed_meanwhile: int = 0
    unconfigured: Counter[str] = field(default_factory=Counter)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (sub, provider)
    removed: list[str] = field(default_factory=list)  # key ids of the derived entries removed
    remaining: dict[str, int] = field(default_factory=dict)  # records not yet moved, by key id

    @property
    def complete(self) -> bool:
        return not self.remaining


async def open_for_migration(
    sessions: Sessions, seal: Seal, master_keys: tuple[str, ...], *, iterations_for_new: int
) -> Keyring:
    """The keyring with both the master keys and `seal`, its key active (added if need be)."""
    if not master_keys:
        raise MasterKeyNeededError()
    return await open_sealed(sessions, seal, master_keys, iterations_for_new)


async def migrate_to(
    sessions: Sessions,
    keyring: Keyring,
    open_seal: Callable[[], Seal],
    *,
    batch_size: int = rotation.DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] = lambda _records: None,
) -> MigrationReport:
    """Rewrap every record onto the keyring's current key, then remove the derived entries;
    `open_seal` opens the HSM seal for that last step (the rewrap does not need it)."""
    report = MigrationReport(keyring.current.key_id)
    for _ in range(REWRAP_PASSES):
        rewrap = await rotation.rewrap(sessions, keyring, batch_size=batch_size, on_batch=on_batch)
        report.rewrapped += rewrap.rewrapped
        report.changed_meanwhile += rewrap.changed_meanwhile
        report.unconfigured, report.corrupt = rewrap.unconfigured, rewrap.corrupt
        report.remaining = rewrap.remaining
        stuck = sum(rewrap.unconfigured.values()) + len(rewrap.corrupt)
        if sum(rewrap.remaining.values()) <= stuck:
            break
    async with session_scope(sessions) as session:
        derived = {
            entry.key_id
            for entry in await keyring_repository.list_root_keys(session)
            if entry.seal == SealKind.env and entry.retired_at is not None
        }
    removed: list[str] = []
    if derived:
        seal = open_seal()
        try:
            removed = await root_rotation.remove_emptied(
                sessions, seal, _only(keyring, derived), retired_before=datetime.now(UTC)
            )
        finally:
            seal.close()
    report.removed = sorted(removed)
    if keyring.master_key_ids:
        # What the env seal still wraps (audit keys of keys removed before, random root keys
        # still holding records) moves under the HSM too: the master key opens none of it then.
        master = keyring.root(keyring.master_key_ids[0])
        assert master is not None
        seal = open_seal()
        try:
            async with session_scope(sessions) as session:
                await rewrap_keyring(session, EnvSeal(master), seal)
        finally:
            seal.close()
    return report


def _only(keyring: Keyring, key_ids: set[str]) -> Keyring:
    """The keyring reduced to the current key and `key_ids`: what the removal may touch."""
    return Keyring(keyring.current, tuple(k for k in keyring.previous if k.key_id in key_ids))
