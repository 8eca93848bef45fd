"""The keyring's upkeep inside the running service: reload it, rotate the root key on schedule,
rewrap the records under retired keys at a bounded rate, remove the keys emptied that way.

Every instance reloads its keyring every RELOAD_SECONDS (master_keys.live_keyring). The rest is
done by one instance at a time, the holder of the "keyring" lease (master_keys.lease): it rotates
when the active root key is older than KEYVAULT_ROOT_KEY_ROTATION_DAYS, then rewraps at
KEYVAULT_REWRAP_RATE records per second with master_keys.rotation's rewrap, without row locks (a
writer never waits on it; the compare-and-swap lets any PUT in between win), renewing the lease as
it goes, then removes retired keys no record uses any more. A holder killed mid-way stops renewing;
the next one takes the lease once it runs out and carries on: the rewrap needs no progress of its
own, the records still under old keys are what is left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.db.engine import session_scope
from keyvault.master_keys import keyring_repository, lease, repository, root_rotation, rotation
from keyvault.master_keys.live_keyring import LiveKeyring, SealOpener
from keyvault.master_keys.seals import SealError

log = logging.getLogger("keyvault")

LEASE_NAME = "keyring"
RELOAD_SECONDS = 5.0
LEASE_TTL = timedelta(seconds=10)
STUCK_RETRY_SECONDS = 300.0
# How long a stopping service waits for the step in progress (a rewrap batch, a rotation) to end
# before it cancels it; cancelled mid-statement, a connection can be left to the garbage collector.
STOP_SECONDS = 10.0


class LeaseLostError(Exception):
    """Another instance holds the lease now (this one stalled past its end): stop at once."""


class KeyringChangedError(Exception):
    """The active root key changed during a rewrap onto the one before it."""


class StoppingError(Exception):
    """The service is stopping: the rewrap ends after the batch it has written."""


@dataclass(frozen=True, slots=True)
class Schedule:
    rotation_days: int
    rewrap_rate: int  # records per second
    removal_grace: timedelta = root_rotation.REMOVAL_GRACE

    @property
    def batch_size(self) -> int:
        # About ten batches a second: short transactions, and the rate holds within a second.
        return max(1, min(rotation.DEFAULT_BATCH_SIZE, self.rewrap_rate // 10))


class KeyringMaintenance:
    """What each instance runs beside its requests (`run`), one round at a time (`run_once`)."""

    def __init__(
        self,
        live: LiveKeyring,
        sessions: async_sessionmaker[AsyncSession],
        open_seal: SealOpener,
        schedule: Schedule,
    ) -> None:
        self.live = live
        self._sessions = sessions
        self._open_seal = open_seal
        self.schedule = schedule
        self.holder = uuid.uuid4().hex
        # After a pass that could rewrap nothing (records that do not open), the next waits.
        self._rewrap_after = 0.0
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Until `stop`: the keyring reloaded every RELOAD_SECONDS, and a round of upkeep as
        often; each on its own, so a long rewrap never holds a reload back."""
        await asyncio.gather(self._every_round(self.live.reload), self._every_round(self.work))

    def stop(self) -> None:
        """`run` returns once the steps in progress have ended (a rewrap, after its batch)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less when `stop` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _every_round(self, step: Callable[[], Awaitable[object]]) -> None:
        while not self.stopping:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the next round tries again; requests go on meanwhile
                log.error(
                    "keyring upkeep failed (%s)",
                    type(error).__name__,
                    extra={"event": "keyring_maintenance_failed"},
                )
            await self.pause(RELOAD_SECONDS)

    async def run_once(self) -> None:
        """One reload and one round of upkeep (what `run` repeats)."""
        await self.live.reload()
        await self.work()

    async def work(self) -> None:
        """Rotate if due, rewrap, remove emptied keys: only while holding the lease."""
        if not await self._work_to_do():
            return
        if not await self.take_lease():
            return
        try:
            await self._rotate_if_due()
            await self._rewrap()
            await self._remove_emptied()
        finally:
            await lease.release(self._sessions, LEASE_NAME, self.holder, datetime.now(UTC))

    async def _work_to_do(self) -> bool:
        keyring, now = self.live.current, datetime.now(UTC)
        async with session_scope(self._sessions) as session:
            entries = await keyring_repository.list_root_keys(session)
            retired = [key.key_id for key in keyring.previous]
            if await repository.any_record_under(session, retired):
                return True
        if root_rotation.rotation_due(entries, self.schedule.rotation_days, now):
            return True
        return bool(root_rotation.removable(entries, keyring, now - self.schedule.removal_grace))

    async def take_lease(self) -> bool:
        return await lease.acquire(
            self._sessions, LEASE_NAME, self.holder, LEASE_TTL, datetime.now(UTC)
        )

    async def _rotate_if_due(self) -> None:
        async with session_scope(self._sessions) as session:
            entries = await keyring_repository.list_root_keys(session)
        if not root_rotation.rotation_due(entries, self.schedule.rotation_days, datetime.now(UTC)):
            return
        seal = await self._open_seal()
        try:
            rotated = await root_rotation.rotate_root(
                self._sessions, seal, self.live.current, operation="scheduled root-key rotation"
            )
        except SealError as error:
            log.error("scheduled root-key rotation skipped: %s", error)
            return
        finally:
            seal.close()
        await self.live.adopt(rotated)

    async def _rewrap(self) -> None:
        if time.monotonic() < self._rewrap_after:
            return
        keyring = self.live.current
        async with session_scope(self._sessions) as session:
            retired = [key.key_id for key in keyring.previous]
            if not await repository.any_record_under(session, retired):
                return
        pace = _Pace(self, keyring.current.key_id, self.schedule.rewrap_rate)
        try:
            report = await rotation.rewrap(
                self._sessions,
                keyring,
                batch_size=self.schedule.batch_size,
                lock=False,
                pace=pace.after_batch,
            )
        except KeyringChangedError:
            return  # another rotation: the next round rewraps onto the newer key
        except StoppingError:
            return  # what is left is still under the old key; the next start carries on
        if not report.rewrapped:
            self._rewrap_after = time.monotonic() + STUCK_RETRY_SECONDS
        log.info(
            "records rewrapped onto the active root key",
            extra={
                "event": "rewrap",
                "key_id": keyring.current.key_id,
                "rewrapped": report.rewrapped,
                "remaining": sum(report.remaining.values()),
            },
        )

    async def _remove_emptied(self) -> None:
        keyring, now = self.live.current, datetime.now(UTC)
        async with session_scope(self._sessions) as session:
            entries = await keyring_repository.list_root_keys(session)
        if not root_rotation.removable(entries, keyring, now - self.schedule.removal_grace):
            return
        seal = await self._open_seal()
        try:
            removed = await root_rotation.remove_emptied(
                self._sessions, seal, keyring, retired_before=now - self.schedule.removal_grace
            )
        finally:
            seal.close()
        await self.live.adopt(root_rotation.without(self.live.current, removed))


class _Pace:
    """Holds the rewrap to its rate, renews the lease between batches, and stops the rewrap when
    the keyring's active key is no longer the one it rewraps onto."""

    def __init__(self, maintenance: KeyringMaintenance, onto: str, rate: int) -> None:
        self._maintenance = maintenance
        self._onto = onto
        self._rate = rate
        self._started = time.monotonic()
        self._done = 0
        self._renewed = time.monotonic()

    async def after_batch(self, records: int) -> None:
        self._done += records
        ahead = self._done / self._rate - (time.monotonic() - self._started)
        if ahead > 0:
            await self._maintenance.pause(ahead)
        if self._maintenance.stopping:
            raise StoppingError()
        if time.monotonic() - self._renewed >= LEASE_TTL.total_seconds() / 3:
            if not await self._maintenance.take_lease():
                raise LeaseLostError()
            self._renewed = time.monotonic()
        if self._maintenance.live.current.current.key_id != self._onto:
            raise KeyringChangedError()
