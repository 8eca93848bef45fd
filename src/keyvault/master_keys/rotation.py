"""Master-key rotation: rewrap records sealed under retired keys, and report which keys are in use.

A rewrap opens a record with whichever configured key sealed it and seals the same plaintext anew
under the current key and record format (fresh salt and nonce), every provider's keys alike: a
format v2 record becomes v3, bound to its provider. It runs batch by batch, each batch its own
transaction, so a rotation killed at any moment leaves every record either as it was or fully
rewrapped, and running it again carries on. It keeps the record's `version` and `updated_at`: the
user's value did not change, so their ETags stay valid. A PUT that lands between the read and the
write wins (see `repository.swap_sealed`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.crypto.records import (
    FORMAT_VERSION,
    Keyring,
    RecordIntegrityError,
    SealedRecord,
    UnknownKeyIdError,
)
from keyvault.db.engine import session_scope
from keyvault.master_keys import repository
from keyvault.master_keys.repository import KeyUsage, RewrapCandidate

DEFAULT_BATCH_SIZE = 500

log = logging.getLogger("keyvault")


@dataclass(slots=True)
class RewrapReport:
    rewrapped: int = 0
    # Lost the compare-and-swap: a PUT, a delete or another rotator got there first.
    changed_meanwhile: int = 0
    unconfigured: Counter[str] = field(default_factory=Counter)  # key id → records
    # (sub, provider) of each record that fails its integrity check
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    # After the run: records still not under the current key, by key id.
    remaining: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KeysReport:
    usage: list[KeyUsage]
    current_key_id: str
    previous_key_ids: tuple[str, ...]  # the previous master keys' ids in configuration order
    keyring_ids: frozenset[str] = frozenset()  # root keys held by the keyring, not master keys
    current_master_key_id: str | None = None

    @property
    def records_by_key_id(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for entry in self.usage:
            counts[entry.key_id] += entry.records
        return counts

    @property
    def unneeded_previous(self) -> list[tuple[int, str]]:
        """(position, key id) of configured previous keys no record needs: none is sealed under
        them, or the keyring holds their root key wrapped."""
        used = self.records_by_key_id
        return [
            (position, key_id)
            for position, key_id in enumerate(self.previous_key_ids, start=1)
            if used[key_id] == 0 or key_id in self.keyring_ids
        ]

    @property
    def unconfigured(self) -> dict[str, int]:
        known = {self.current_key_id, *self.previous_key_ids, *self.keyring_ids}
        known.add(self.current_master_key_id or self.current_key_id)
        return {k: n for k, n in self.records_by_key_id.items() if k not in known}

    def role(self, key_id: str) -> str:
        """What this process holds for `key_id`, as `keyvault keys status` names it."""
        if key_id == self.current_key_id:
            return "current"
        if key_id in self.keyring_ids:
            return "retired root key (in the keyring)"
        if key_id in self.previous_key_ids:
            return f"previous #{self.previous_key_ids.index(key_id) + 1}"
        if key_id == self.current_master_key_id:
            return "current master key (retired root key)"
        return "NOT CONFIGURED: these records cannot be read"


def previous_master_key_ids(keyring: Keyring) -> tuple[str, ...]:
    """The configured previous master keys' ids, in order; for a keyring assembled without
    naming them, every retired key it does not hold wrapped."""
    if keyring.master_key_ids:
        return keyring.master_key_ids[1:]
    return tuple(k.key_id for k in keyring.previous if k.key_id not in keyring.sealed_ids)


async def rewrap(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
    on_batch: Callable[[int], None] = lambda _records: None,
    lock: bool = True,
    pace: Callable[[int], Awaitable[None]] | None = None,
) -> RewrapReport:
    """Rewrap every record not under the current key and format; `dry_run` only opens them.

    Every provider's keys: walks the table once in (sub, provider) order. Records that cannot be
    opened (key not configured, or corrupt) are counted and left as they are; the walk moves past
    them, so it always ends. Without `lock` the batch's rows are read without row locks (one
    rewrapper at a time, the service's; the compare-and-swap still lets a PUT win); `pace` is
    awaited after each batch, outside its transaction.
    """
    report = RewrapReport()
    after: tuple[str, str] | None = None
    while True:
        async with session_scope(sessions) as session:
            batch = await repository.records_to_rewrap(
                session,
                keyring.current.key_id,
                FORMAT_VERSION,
                after=after,
                limit=batch_size,
                lock=lock and not dry_run,
            )
            if not batch:
                break
            after = (batch[-1].sub, batch[-1].provider)
            swaps = _reseal(keyring, batch, report)
            if dry_run:
                report.rewrapped += len(swaps)
            else:
                swapped = await repository.swap_sealed(session, swaps)
                report.rewrapped += swapped
                report.changed_meanwhile += len(swaps) - swapped
        on_batch(len(batch))
        if pace is not None:
            await pace(len(batch))
    report.remaining = await records_not_under_current_key(sessions, keyring)
    return report


def _reseal(
    keyring: Keyring, batch: list[RewrapCandidate], report: RewrapReport
) -> list[tuple[RewrapCandidate, SealedRecord]]:
    swaps = []
    for candidate in batch:
        try:
            plaintext = keyring.open(candidate.sub, candidate.provider, candidate.sealed)
        except UnknownKeyIdError as error:
            report.unconfigured[error.key_id] += 1
            continue
        except RecordIntegrityError:
            report.corrupt.append((candidate.sub, candidate.provider))
            continue
        swaps.append((candidate, keyring.seal(candidate.sub, candidate.provider, plaintext)))
    return swaps


async def count_to_rewrap(sessions: async_sessionmaker[AsyncSession], keyring: Keyring) -> int:
    return sum((await records_not_under_current_key(sessions, keyring)).values())


async def records_not_under_current_key(
    sessions: async_sessionmaker[AsyncSession], keyring: Keyring
) -> dict[str, int]:
    async with session_scope(sessions) as session:
        usage = await repository.count_records_by_key(session)
    remaining: Counter[str] = Counter()
    for entry in usage:
        if entry.key_id != keyring.current.key_id or entry.format_version != FORMAT_VERSION:
            remaining[entry.key_id] += entry.records
    return dict(remaining)


async def keys_report(sessions: async_sessionmaker[AsyncSession], keyring: Keyring) -> KeysReport:
    async with session_scope(sessions) as session:
        usage = await repository.count_records_by_key(session)
    master = keyring.master_key_ids[0] if keyring.master_key_ids else None
    previous = previous_master_key_ids(keyring)
    held = frozenset(
        k.key_id
        for k in keyring.previous
        if k.key_id in keyring.sealed_ids or k.key_id not in (*previous, master)
    )
    return KeysReport(usage, keyring.current.key_id, previous, held, master)


async def log_unconfigured_key_ids(
    sessions: async_sessionmaker[AsyncSession], keyring: Keyring
) -> None:
    """At start-up: records the service cannot open deserve an error before anyone asks for one."""
    async with session_scope(sessions) as session:
        stored = await repository.stored_key_ids(session)
    for key_id in sorted(stored - keyring.key_ids):
        log.error(
            "records are sealed under master key id %s, which is not configured; reading them "
            "fails until that key is added to MASTER_ENCRYPTION_KEY_PREVIOUS",
            key_id,
        )


def summary(report: RewrapReport, keyring: Keyring, *, dry_run: bool) -> str:
    """The one line `keyvault rotate` ends with: what it did, and whether old keys are still needed."""
    if dry_run:
        done = f"dry run: {report.rewrapped} records would be rewrapped; nothing was written"
    else:
        done = f"rewrapped {report.rewrapped} records"
        if report.changed_meanwhile:
            done += f" ({report.changed_meanwhile} changed meanwhile and keep their newer value)"
    problems = sum(report.unconfigured.values()) + len(report.corrupt)
    if problems:
        done += f"; {problems} could not be opened (see above)"
    previous = previous_master_key_ids(keyring)
    positions = {
        key_id: n for n, key_id in enumerate(previous, start=1) if key_id not in keyring.sealed_ids
    }
    still_needed = {k: n for k, n in report.remaining.items() if k in positions}
    if still_needed:
        needed = ", ".join(
            f"previous key #{positions[k]} (id {k}) by {n} records"
            for k, n in sorted(still_needed.items())
        )
        return f"{done}; still needed: {needed}"
    if previous:
        return (
            f"{done}; no record needs a previous key: MASTER_ENCRYPTION_KEY_PREVIOUS may be removed"
        )
    return f"{done}; no previous key is configured"
