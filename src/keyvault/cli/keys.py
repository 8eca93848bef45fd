"""`keyvault rotate`, `keyvault keys status` and `keyvault keys rotate-root`: the lifecycle of the
keys that seal records (logic in keyvault.master_keys.rotation and .root_rotation).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from keyvault.cli.common import one_line_failures, progress, unlocked
from keyvault.config import load_settings
from keyvault.crypto.records import Keyring
from keyvault.master_keys import root_rotation, rotation
from keyvault.master_keys.keyring import seal_opener

keys_app = typer.Typer(
    help="The keys that seal records: which ones the records need, and rotating the root key.",
    no_args_is_help=True,
)


@one_line_failures
def rotate(
    batch_size: Annotated[
        int, typer.Option(min=1, help="Records per transaction.")
    ] = rotation.DEFAULT_BATCH_SIZE,
    dry_run: Annotated[
        bool, typer.Option(help="Open every record and count; write nothing.")
    ] = False,
) -> None:
    """Rewrap every record still sealed under a previous master key with the current one.

    Safe while the service runs, safe to run several at once, safe to kill and run again.
    """
    settings = load_settings()

    async def run() -> tuple[rotation.RewrapReport, Keyring]:
        async with unlocked(settings) as (sessions, keyring):
            total = await rotation.count_to_rewrap(sessions, keyring)
            with progress("rewrapping", total) as advance:
                report = await rotation.rewrap(
                    sessions, keyring, batch_size=batch_size, dry_run=dry_run, on_batch=advance
                )
            return report, keyring

    report, keyring = asyncio.run(run())
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
    typer.echo(rotation.summary(report, keyring, dry_run=dry_run))
    if report.corrupt or report.unconfigured:
        raise typer.Exit(code=1)


@keys_app.command("status")
@one_line_failures
def keys_status() -> None:
    """Records per key id and format version, and which configured keys are no longer needed."""
    settings = load_settings()

    async def run() -> rotation.KeysReport:
        async with unlocked(settings) as (sessions, keyring):
            return await rotation.keys_report(sessions, keyring)

    report = asyncio.run(run())
    typer.echo(f"{'key id':<18}{'format':<8}{'records':>10}  configured as")
    for entry in report.usage:
        role = report.role(entry.key_id)
        typer.echo(f"{entry.key_id:<18}v{entry.format_version:<7}{entry.records:>10}  {role}")
    if not report.usage:
        typer.echo("(no records)")
    for position, key_id in report.unneeded_previous:
        typer.echo(f"previous key #{position} (id {key_id}) is no longer needed and may be removed")
    if report.unconfigured:
        raise typer.Exit(code=1)


@keys_app.command("rotate-root")
@one_line_failures
def rotate_root() -> None:
    """Add a new random root key to the keyring, wrapped by the seal, and make it active at once.

    The running service rewraps the records under older root keys onto it in the background
    (KEYVAULT_REWRAP_RATE records/s), and removes an old key once no record uses it; `keyvault
    rotate` does the rewrap at once instead.
    """
    settings = load_settings()

    async def run() -> tuple[str, str, int]:
        async with unlocked(settings) as (sessions, keyring):
            seal = await seal_opener(settings, keyring)()
            try:
                rotated = await root_rotation.rotate_root(sessions, seal, keyring)
            finally:
                seal.close()
            left = await rotation.count_to_rewrap(sessions, rotated)
        return keyring.current.key_id, rotated.current.key_id, left

    old, new, left = asyncio.run(run())
    typer.echo(
        f"root key {new} is active (it replaces {old}); the running service rewraps the {left} "
        f"records under older root keys onto it at {settings.rewrap_rate} records/s "
        "(KEYVAULT_REWRAP_RATE), or run `keyvault rotate` to do it now"
    )
