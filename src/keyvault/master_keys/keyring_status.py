"""What `keyvault seal status` reports: each keyring entry with its record count, the root-key
rotation schedule, what is left to rewrap, and the recovery kit. Nothing secret."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.crypto.keyring import KeyPurpose
from keyvault.crypto.records import Keyring
from keyvault.db.engine import session_scope
from keyvault.master_keys import keyring_repository, repository
from keyvault.master_keys.recovery import KitStatus, kit_status
from keyvault.master_keys.seals import SealKind

Sessions = async_sessionmaker[AsyncSession]


@dataclass(frozen=True, slots=True)
class KeyringEntryStatus:
    key_id: str
    seal: str
    created_at: datetime | None
    retired_at: datetime | None
    records: int
    in_keyring: bool  # False: records name a key id that no keyring entry holds
    opened: bool  # this process holds the key (unwrapped, or derived from a configured master key)
    purpose: KeyPurpose = KeyPurpose.root

    @property
    def state(self) -> str:
        if self.purpose == KeyPurpose.audit:
            return "removed (only its audit key is kept, to check old audit events)"
        if not self.in_keyring:
            if self.opened:
                return "previous master key (not in the keyring)"
            return "NOT IN THE KEYRING: these records cannot be read"
        if self.retired_at is None:
            return "active"
        if self.opened:
            return "retired"
        needs = " (needs MASTER_ENCRYPTION_KEY)" if self.seal == SealKind.env else ""
        return f"retired, not opened{needs}"


@dataclass(frozen=True, slots=True)
class Overview:
    """The keyring's lifecycle at a glance."""

    last_rotation: datetime | None  # when the active root key was added
    next_rotation: datetime | None  # None when rotation is off
    to_rewrap: int  # records not under the active root key
    kit: KitStatus | None


async def keyring_status(sessions: Sessions, keyring: Keyring) -> list[KeyringEntryStatus]:
    """Each keyring entry with its record count, then the key ids records use but no entry holds."""
    async with session_scope(sessions) as session:
        entries = await keyring_repository.list_entries(session)
        usage = await repository.count_records_by_key(session)
    records: Counter[str] = Counter()
    for entry in usage:
        records[entry.key_id] += entry.records
    listed = [
        KeyringEntryStatus(
            e.key_id,
            e.seal,
            e.created_at,
            e.retired_at,
            records[e.key_id],
            in_keyring=True,
            opened=keyring.root(e.key_id) is not None,
            purpose=e.purpose,
        )
        for e in entries
    ]
    known = {e.key_id for e in entries}
    listed += [
        KeyringEntryStatus(
            key_id,
            "-",
            None,
            None,
            count,
            in_keyring=False,
            opened=keyring.root(key_id) is not None,
        )
        for key_id, count in sorted(records.items())
        if key_id not in known
    ]
    return listed


async def overview(sessions: Sessions, keyring: Keyring, rotation_days: int) -> Overview:
    async with session_scope(sessions) as session:
        entries = await keyring_repository.list_root_keys(session)
        usage = await repository.count_records_by_key(session)
        kit = await kit_status(session)
    active = [entry.created_at for entry in entries if entry.active]
    last = max(active) if active else None
    upcoming = last + timedelta(days=rotation_days) if last and rotation_days else None
    left = sum(u.records for u in usage if u.key_id != keyring.current.key_id)
    return Overview(last, upcoming, left, kit)
