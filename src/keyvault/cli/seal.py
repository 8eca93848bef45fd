"""`keyvault seal create-key`, `migrate`, `status`, `recovery-kit` and `recover`: what wraps the
keyring of root keys (logic in keyvault.master_keys.seals, .pkcs11_seal, .seal_migration,
.keyring_status and .recovery).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import typer

from keyvault.cli import recovery
from keyvault.cli.common import SchemaNotReadyError, one_line_failures, progress, unlocked
from keyvault.config import Settings, load_settings
from keyvault.db.engine import create_engine, create_sessionmaker
from keyvault.db.migrations import is_at_head
from keyvault.master_keys import keyring_status, pkcs11_seal, rotation, seal_migration
from keyvault.master_keys.pkcs11_seal import open_hsm_seal
from keyvault.master_keys.seals import configured_master_keys

seal_app = typer.Typer(
    help="The seal that wraps the keyring of root keys: the master key, or a key in an HSM.",
    no_args_is_help=True,
)


class Target(StrEnum):
    pkcs11 = "pkcs11"


@seal_app.command("create-key")
@one_line_failures
def create_key() -> None:
    """Generate the wrapping key in the PKCS#11 token (AES-256, sensitive, never extractable)."""
    config = pkcs11_seal.Pkcs11Settings.from_settings(load_settings())
    pkcs11_seal.create_key(config)
    typer.echo(f"created the wrapping key: {config.describe()}, AES-256, not extractable")


@seal_app.command("migrate")
@one_line_failures
def migrate(
    to: Annotated[Target, typer.Option("--to", help="The seal to move the keyring into.")],
    batch_size: Annotated[
        int, typer.Option(min=1, help="Records per transaction.")
    ] = rotation.DEFAULT_BATCH_SIZE,
) -> None:
    """Move the keyring into the HSM: a new root key wrapped there, every record rewrapped onto it
    (online, resumable), then the keys derived from MASTER_ENCRYPTION_KEY removed.

    Needs MASTER_ENCRYPTION_KEY and the KEYVAULT_PKCS11_* settings. Safe while the service runs
    (once every instance runs with KEYVAULT_SEAL=pkcs11), safe to kill and run again.
    """
    settings = load_settings()
    report = asyncio.run(_migrate(settings, batch_size))
    for sub, provider in report.corrupt:
        typer.echo(
            f"keyvault: the {provider} key of sub {sub!r} fails its integrity check; left as it is",
            err=True,
        )
    for key_id, count in sorted(report.unconfigured.items()):
        typer.echo(
            f"keyvault: {count} records are sealed under key id {key_id}, which is not configured; "
            "left as they are",
            err=True,
        )
    done = f"rewrapped {report.rewrapped} records onto root key {report.current_key_id}"
    if report.changed_meanwhile:
        done += f" ({report.changed_meanwhile} changed meanwhile and keep their newer value)"
    if not report.complete:
        left = sum(report.remaining.values())
        typer.echo(
            f"{done}; {left} records are not yet under it, so the master key's root keys stay "
            "in the keyring; run `keyvault seal migrate` again",
        )
        raise typer.Exit(code=1)
    removed = ", ".join(report.removed) or "none left"
    typer.echo(
        f"{done}; removed the root keys derived from the master key ({removed}): "
        "MASTER_ENCRYPTION_KEY alone opens nothing now and may be removed from the configuration"
    )


async def _migrate(settings: Settings, batch_size: int) -> seal_migration.MigrationReport:
    master_keys = configured_master_keys(settings)
    if not master_keys:
        raise seal_migration.MasterKeyNeededError()
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        if not await is_at_head(engine, settings.database_url.get_secret_value()):
            raise SchemaNotReadyError()
        sessions = create_sessionmaker(engine)
        seal = open_hsm_seal(settings)
        try:
            keyring = await seal_migration.open_for_migration(
                sessions, seal, master_keys, iterations_for_new=settings.kdf_iterations
            )
        finally:
            seal.close()  # the keyring is open: the rewrap needs the HSM no more
        total = await rotation.count_to_rewrap(sessions, keyring)
        with progress("rewrapping", total) as advance:
            return await seal_migration.migrate_to(
                sessions,
                keyring,
                lambda: open_hsm_seal(settings),
                batch_size=batch_size,
                on_batch=advance,
            )
    finally:
        await engine.dispose()


@seal_app.command("status")
@one_line_failures
def status() -> None:
    """The seal in use, the root-key rotation schedule, what is left to rewrap, the recovery kit,
    and each root key: its id, seal, creation time, state and record count."""
    settings = load_settings()

    async def run() -> tuple[keyring_status.Overview, list[keyring_status.KeyringEntryStatus]]:
        async with unlocked(settings) as (sessions, keyring):
            days = settings.root_key_rotation_days
            return (
                await keyring_status.overview(sessions, keyring, days),
                await keyring_status.keyring_status(sessions, keyring),
            )

    overview, entries = asyncio.run(run())
    typer.echo(f"seal: {_describe(settings)}")
    for line in _overview_lines(settings, overview):
        typer.echo(line)
    typer.echo(f"{'key id':<18}{'seal':<8}{'created':<22}{'records':>9}  state")
    for entry in entries:
        typer.echo(
            f"{entry.key_id:<18}{entry.seal:<8}{_when(entry.created_at):<22}"
            f"{entry.records:>9}  {entry.state}"
        )
    if any(not entry.opened and entry.records for entry in entries):
        raise typer.Exit(code=1)


def _overview_lines(settings: Settings, overview: keyring_status.Overview) -> list[str]:
    days = settings.root_key_rotation_days
    schedule = f"every {days} days" if days else "off"
    rotation = f"root-key rotation: {schedule} (KEYVAULT_ROOT_KEY_ROTATION_DAYS)"
    rotation += f"; last {_when(overview.last_rotation)}"
    if overview.next_rotation is not None:
        rotation += f"; next due {_when(overview.next_rotation)}"
    rewrap = (
        f"to rewrap: {overview.to_rewrap} records not under the active root key "
        f"(the service rewraps {settings.rewrap_rate}/s, KEYVAULT_REWRAP_RATE)"
    )
    kit = overview.kit
    if kit is None:
        recovery_line = "recovery kit: none (`keyvault seal recovery-kit` makes one)"
    else:
        recovery_line = (
            f"recovery kit: made {_when(kit.created_at)}, any {kit.threshold} of "
            f"{kit.shares} shares"
        )
    return [rotation, rewrap, recovery_line]


def _describe(settings: Settings) -> str:
    if settings.seal == Target.pkcs11:
        return pkcs11_seal.Pkcs11Settings.from_settings(settings).describe()
    return "env (MASTER_ENCRYPTION_KEY)"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else "-"


seal_app.command("recovery-kit")(recovery.recovery_kit)
seal_app.command("recover")(recovery.recover)
