"""The running service's keyring, kept up to date without a restart.

Another instance may rotate the root key at any time. Each instance reloads the keyring's entries
every few seconds (master_keys.maintenance), and at once when a read meets a record under a key id
it does not hold: it unwraps the new entries only (under pkcs11 that is a rare call to the HSM,
never one per request) and seals new records under the new active key from then on.

An instance that cannot open the new active key (the HSM unreachable, a configuration from before
a master-key rotation) keeps serving with what it holds, says so in the log, and after
WRITE_GRACE without seeing its own key active refuses writes with 503: the old key may be removed
once it has been retired for twice that long (master_keys.root_rotation), and no record may be
sealed under a key that is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.crypto.keyring import UnwrapError, accept_unwrapped
from keyvault.crypto.records import Keyring, RootKey
from keyvault.db.engine import session_scope
from keyvault.errors import KeyringOutdated
from keyvault.master_keys import keyring_repository
from keyvault.master_keys.keyring_repository import StoredRootKey
from keyvault.master_keys.root_rotation import REMOVAL_GRACE
from keyvault.master_keys.seals import Seal, SealError

log = logging.getLogger("keyvault")

WRITE_GRACE = REMOVAL_GRACE / 2
# A read under an unknown key id reloads the keyring at most this often (seconds).
UNKNOWN_KEY_RELOAD_SECONDS = 1.0

SealOpener = Callable[[], Awaitable[Seal]]


class LiveKeyring:
    """The keyring requests use now (`current`), and how it follows the database's.

    Without sessions it is fixed: what it was given is what it keeps (tests build apps so).
    """

    def __init__(
        self,
        keyring: Keyring,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        open_seal: SealOpener | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._keyring = keyring
        self._sessions = sessions
        self._open_seal = open_seal
        self._clock = clock
        self._confirmed_at = clock()
        self._lock = asyncio.Lock()
        self._last_forced = 0.0
        self._reported: set[str] = set()

    def __repr__(self) -> str:
        return f"LiveKeyring({self._keyring!r})"

    @property
    def current(self) -> Keyring:
        """The keyring as last loaded: reads open with it, the audit trail links with it."""
        return self._keyring

    @property
    def fresh(self) -> bool:
        """Whether this instance saw its current key active in the database recently enough."""
        return self._sessions is None or self._clock() - self._confirmed_at <= WRITE_GRACE

    def for_writing(self) -> Keyring:
        """The keyring a write seals with; KeyringOutdated (503) when it is not fresh."""
        if not self.fresh:
            raise KeyringOutdated()
        return self._keyring

    async def adopt(self, keyring: Keyring) -> None:
        """This process changed the keyring itself (a rotation, a removal), and committed it. After
        any reload in flight, which may have read the entries from before the change."""
        async with self._lock:
            self._keyring = keyring
            self._confirmed_at = self._clock()

    async def for_key_id(self, key_id: str) -> Keyring:
        """The keyring, reloaded first if it lacks `key_id` (at most once a second)."""
        if self._sessions is None or self._keyring.root(key_id) is not None:
            return self._keyring
        if self._lock.locked() or time.monotonic() - self._last_forced >= (
            UNKNOWN_KEY_RELOAD_SECONDS
        ):
            self._last_forced = time.monotonic()
            await self.reload()
        return self._keyring

    async def reload(self) -> Keyring:
        """Read the keyring's entries and open the new ones; one reload at a time."""
        if self._sessions is None:
            return self._keyring
        if self._lock.locked():
            async with self._lock:  # another caller is reloading: its result is ours
                return self._keyring
        async with self._lock:
            async with session_scope(self._sessions) as session:
                entries = await keyring_repository.list_root_keys(session)
            self._keyring = await self._follow(entries)
            return self._keyring

    async def _follow(self, entries: list[StoredRootKey]) -> Keyring:
        known = self._keyring
        held = {key.key_id: key for key in (known.current, *known.previous)}
        unwrapped = await self._unwrap_new(entries, held)
        held.update(unwrapped)
        present = {entry.key_id for entry in entries} | set(known.master_key_ids)
        kept = {key_id: key for key_id, key in held.items() if key_id in present}
        active = next((entry.key_id for entry in entries if entry.active), None)
        if active is not None and active in kept:
            current = kept[active]
            self._confirmed_at = self._clock()
        else:
            current = known.current
            self._report(
                active or "-",
                "the keyring's active root key %s cannot be opened by this instance; it goes on "
                "sealing under %s and stops taking writes if this lasts",
                active,
                current.key_id,
            )
        kept.pop(current.key_id, None)
        if current is known.current and not unwrapped and len(kept) == len(known.previous):
            return known
        return Keyring(
            current,
            tuple(kept.values()),
            master_key_ids=known.master_key_ids,
            sealed_ids=(known.sealed_ids | set(unwrapped)) & present,
        )

    async def _unwrap_new(
        self, entries: list[StoredRootKey], held: dict[str, RootKey]
    ) -> dict[str, RootKey]:
        new = [e for e in entries if e.key_id not in held and e.wrapped is not None]
        if not new or self._open_seal is None:
            return {}
        try:
            seal = await self._open_seal()
        except SealError as error:
            self._report("seal", "the seal cannot be opened to load new root keys: %s", error)
            return {}
        opened = {}
        try:
            for entry in new:
                if entry.seal != seal.kind or entry.wrapped is None:
                    continue
                try:
                    material = seal.unwrap(entry.wrapped)
                    opened[entry.key_id] = accept_unwrapped(entry.key_id, material)
                except (UnwrapError, SealError):
                    self._report(
                        entry.key_id, "root key %s does not unwrap with this seal", entry.key_id
                    )
        finally:
            seal.close()
        for key_id in opened:
            log.info("new root key loaded", extra={"event": "root_key_loaded", "key_id": key_id})
        return opened

    def _report(self, about: str, message: str, *args: object) -> None:
        # Once per key (or cause) and process: a reload runs every few seconds.
        if about not in self._reported:
            self._reported.add(about)
            log.error(message, *args, extra={"event": "keyring_not_followed"})
