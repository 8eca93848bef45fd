"""The recovery kit: a recovery key split into SLIP-39 shares, and a second slot of the keyring
sealed to it, so that a lost master key or a dead HSM loses nothing.

`make_kit` draws a recovery secret, splits it into N mnemonic shares of which any K recover it
(shamir-mnemonic), and stores every keyring entry's material sealed to the recovery key's public
half (crypto.recovery): root keys (those derived from a master key too) and the audit keys kept
for removed ones. Keys added later (a rotation) get their copy from the public half alone. A new
kit replaces the public half and every copy at once: the old shares open nothing any more.

`recover` combines K shares, opens every copy, and wraps each entry anew under the seal configured
now (a new MASTER_ENCRYPTION_KEY, or a new HSM key), in one transaction; under env the new master
key becomes the deployment's one active master key. It then rotates to a fresh root key, so that
new writes use a key that did not pass through the recovery, and audits it. The shares are never
logged, and no message quotes them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import shamir_mnemonic
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.audit.events import Action
from keyvault.audit.trail import log_event, record_operation
from keyvault.config import Settings
from keyvault.crypto.keyring import KeyPurpose, UnwrapError, accept_unwrapped
from keyvault.crypto.records import Keyring, RootKey
from keyvault.crypto.recovery import RecoveryKey, new_recovery_secret, seal_copy
from keyvault.db.engine import session_scope
from keyvault.master_keys import keyring_repository, repository
from keyvault.master_keys.keyring import new_sealed_root_key
from keyvault.master_keys.keyring_repository import StoredRootKey
from keyvault.master_keys.pkcs11_seal import open_hsm_seal
from keyvault.master_keys.seals import EnvSeal, Seal, SealError, SealKind

Sessions = async_sessionmaker[AsyncSession]

MAX_SHARES: Final = 16  # SLIP-39's limit for one group

log = logging.getLogger("keyvault")


class RecoveryError(SealError):
    """A kit cannot be made, or shares do not recover: one line, never quoting a share."""


@dataclass(frozen=True, slots=True)
class KitStatus:
    created_at: datetime
    shares: int
    threshold: int


@dataclass(frozen=True, slots=True)
class Recovered:
    seal: str  # the seal the keyring is wrapped by now
    root_keys: int
    audit_keys: int
    current_key_id: str  # the fresh root key new writes use


@dataclass(frozen=True, slots=True)
class ShareSet:
    """Shares as typed; the repr counts them, never shows them."""

    mnemonics: tuple[str, ...] = field(repr=False)


def check_split(shares: int, threshold: int) -> None:
    if not 1 <= threshold <= shares <= MAX_SHARES:
        raise RecoveryError(
            f"a kit has 1 to {MAX_SHARES} shares and a threshold from 1 to that number of shares"
        )
    if threshold == 1 and shares > 1:
        raise RecoveryError(
            "a threshold of 1 would make every share a full copy of the recovery key: use "
            "--threshold 2 or more (or --shares 1 --threshold 1)"
        )


def share_threshold(mnemonic: str, position: int) -> int:
    """How many shares the kit of this share needs; RecoveryError if it is no valid share."""
    try:
        return int(shamir_mnemonic.Share.from_mnemonic(mnemonic).member_threshold)
    except (shamir_mnemonic.MnemonicError, ValueError):
        raise invalid_share(position) from None


async def kit_status(session: AsyncSession) -> KitStatus | None:
    kit = await keyring_repository.get_kit(session)
    if kit is None:
        return None
    return KitStatus(kit.created_at, kit.shares, kit.threshold)


async def make_kit(
    sessions: Sessions, seal: Seal, keyring: Keyring, *, shares: int, threshold: int
) -> ShareSet:
    """A new kit: its shares (printed once by the caller, stored nowhere) and, in the database,
    its public half and every entry's recovery copy, replacing any kit before."""
    check_split(shares, threshold)
    secret = new_recovery_secret()
    recovery_key = RecoveryKey.from_secret(secret)
    (mnemonics,) = shamir_mnemonic.generate_mnemonics(1, [(threshold, shares)], secret)
    async with session_scope(sessions) as session:
        await repository.lock_keyring(session)
        copies = {}
        for entry in await keyring_repository.list_entries(session):
            material = _material_in_hand(entry, seal, keyring)
            copies[entry.key_id] = seal_copy(
                recovery_key.public, entry.key_id, entry.purpose, material
            )
        await keyring_repository.replace_kit(
            session, recovery_key.public, shares, threshold, copies, datetime.now(UTC)
        )
        chained = await record_operation(
            session, keyring.current, Action.recovery_kit, "seal recovery-kit"
        )
    log_event(chained)
    return ShareSet(tuple(mnemonics))


def _material_in_hand(entry: StoredRootKey, seal: Seal, keyring: Keyring) -> bytes:
    if entry.purpose == KeyPurpose.root:
        root = keyring.root(entry.key_id)
        if root is None:
            raise RecoveryError(
                f"root key {entry.key_id} is not open in this process (derived from a master "
                "key that is not configured: set it in MASTER_ENCRYPTION_KEY_PREVIOUS), so a kit "
                "made now could not recover it; nothing was written"
            )
        return root.material
    if entry.wrapped is None or entry.seal != seal.kind:
        raise RecoveryError(
            f"the audit key kept for root key {entry.key_id} is wrapped by the {entry.seal} "
            "seal, not the one configured; nothing was written"
        )
    try:
        return seal.unwrap(entry.wrapped, KeyPurpose.audit)
    except UnwrapError:
        raise RecoveryError(
            f"the {seal.describe()} does not unwrap the audit key kept for root key "
            f"{entry.key_id}; nothing was written"
        ) from None


async def recover(sessions: Sessions, settings: Settings, shares: ShareSet) -> Recovered:
    """Re-seal the whole keyring under the seal `settings` configure, from the kit's shares."""
    recovery_key = RecoveryKey.from_secret(_combine(shares))
    async with session_scope(sessions) as session:
        kit = await keyring_repository.get_kit(session)
        if kit is None:
            raise RecoveryError("this database has no recovery kit; nothing was written")
        if not hmac.compare_digest(kit.public_key, recovery_key.public):
            raise RecoveryError(
                "these shares are not of this database's recovery kit (a newer kit replaces "
                "older ones); nothing was written"
            )
        deployment = await repository.get_deployment(session)
        assert deployment is not None  # a kit needs a keyring, which needs the deployment row
        now = datetime.now(UTC)
        await repository.lock_deployment(
            session, deployment.kdf_salt, deployment.kdf_iterations, now
        )
        entries = await keyring_repository.list_entries(session)
        opened = [(entry, _open_copy(recovery_key, entry)) for entry in entries]
        seal = await _configured_seal(
            session, settings, deployment.kdf_salt, deployment.kdf_iterations, now
        )
        try:
            for entry, material in opened:
                wrapped = seal.wrap(material, entry.purpose)
                await keyring_repository.set_wrapped(
                    session, entry.key_id, seal.kind, wrapped, entry.recovery_wrapped
                )
            active = [e.key_id for e in entries if e.active and e.purpose == KeyPurpose.root]
            root, wrapped = new_sealed_root_key(seal)
            await keyring_repository.retire_active_root_keys(session, active, now)
            await keyring_repository.add_root_key(
                session, root.key_id, seal.kind, wrapped, now, material=root.material
            )
        finally:
            seal.close()
        chained = await record_operation(session, root, Action.recover, "seal recover")
    log_event(chained)
    roots = sum(1 for entry, _ in opened if entry.purpose == KeyPurpose.root)
    log.info(
        "keyring recovered from the recovery kit",
        extra={"event": "keyring_recovered", "seal": seal.kind, "key_id": root.key_id},
    )
    return Recovered(seal.kind, roots + 1, len(opened) - roots, root.key_id)


def _combine(shares: ShareSet) -> bytes:
    try:
        return bytes(shamir_mnemonic.combine_mnemonics(list(shares.mnemonics)))
    except (shamir_mnemonic.MnemonicError, ValueError):
        # The library's messages quote words of the shares: ours never do.
        raise RecoveryError(
            "the shares do not combine: they belong to different kits, or one is mistyped "
            "or repeated; nothing was written"
        ) from None


def _open_copy(recovery_key: RecoveryKey, entry: StoredRootKey) -> bytes:
    if entry.recovery_wrapped is None:
        raise RecoveryError(
            f"keyring entry {entry.key_id} has no copy under the recovery kit (it was added "
            "without one); nothing was written"
        )
    try:
        material = recovery_key.open(entry.key_id, entry.purpose, entry.recovery_wrapped)
        if entry.purpose == KeyPurpose.root:
            accept_unwrapped(entry.key_id, material)
    except UnwrapError:
        raise RecoveryError(
            f"the recovery copy of keyring entry {entry.key_id} does not open (altered); "
            "nothing was written"
        ) from None
    return material


async def _configured_seal(
    session: AsyncSession, settings: Settings, salt: bytes, iterations: int, now: datetime
) -> Seal:
    """The seal the keyring moves under. Under env the configured master key becomes the one
    active master key: the lost one is retired (and refused alone, as any retired key is)."""
    if settings.seal == SealKind.pkcs11:
        return open_hsm_seal(settings)
    root = await asyncio.to_thread(RootKey.derive, settings.master_key(), salt, iterations)
    await repository.make_only_active_verifier(session, root.key_id, root.verifier(), now)
    return EnvSeal(root)


def invalid_share(position: int) -> RecoveryError:
    return RecoveryError(
        f"share {position} is not a valid SLIP-39 share (a word misspelt or missing, or its "
        "checksum fails); nothing was written"
    )
