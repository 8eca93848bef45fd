"""Rewrapping the keyring under another wrapping key: a master-key rotation under the env seal, a
new HSM key under pkcs11, a recovery onto a new seal.

Only the keyring's entries change: the root keys stay the same, so no record is touched and it
takes one short transaction whatever the number of records. The caller's transaction holds it all,
so a failure leaves every entry as it was.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncSession

from keyvault.crypto.keyring import UnwrapError
from keyvault.crypto.records import RootKey
from keyvault.master_keys import keyring_repository
from keyvault.master_keys.seals import KeyringUnwrapError, Seal


async def rewrap_keyring(
    session: AsyncSession, old: Seal, new: Seal, *, derived: Mapping[str, RootKey] | None = None
) -> int:
    """Rewrap every entry `old` wrapped under `new` (entries `new` already opens are left), and
    keep the `derived` keys' entries wrapped by `new` too; how many entries changed.

    KeyringUnwrapError, before anything is written that the caller keeps, for an entry of `old`'s
    kind that neither seal opens."""
    derived = derived or {}
    changed = 0
    for entry in await keyring_repository.list_entries(session):
        if entry.wrapped is None:
            if entry.key_id not in derived:
                continue
            material = derived[entry.key_id].material
        elif entry.seal != old.kind:
            continue
        else:
            try:
                material = old.unwrap(entry.wrapped, entry.purpose)
            except UnwrapError:
                if not _opens(new, entry.wrapped, entry):
                    raise KeyringUnwrapError(old, entry.key_id) from None
                continue
        wrapped = new.wrap(material, entry.purpose)
        await keyring_repository.set_wrapped(
            session, entry.key_id, new.kind, wrapped, entry.recovery_wrapped
        )
        changed += 1
    return changed


def _opens(seal: Seal, wrapped: bytes, entry: keyring_repository.StoredRootKey) -> bool:
    if entry.seal != seal.kind:
        return False
    try:
        seal.unwrap(wrapped, entry.purpose)
    except UnwrapError:
        return False
    return True
