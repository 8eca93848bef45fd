"""`keyvault import-seed`: bring the seed application's keys over (logic in
keyvault.legacy_import.importer).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from keyvault.cli.common import one_line_failures, progress, unlocked
from keyvault.config import ConfigurationError, load_settings
from keyvault.legacy_import import importer as seed_import
from keyvault.legacy_import.seed_crypto import SEED_ITERATIONS


@one_line_failures
def import_seed(
    source: Annotated[
        str,
        typer.Option(
            "--from", help="The seed application's database URL (postgresql://… or sqlite:///…)."
        ),
    ],
    master_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the seed's master key.")
    ] = None,
    master_key_file: Annotated[
        Path | None, typer.Option(help="File holding the seed's master key.")
    ] = None,
    iterations: Annotated[
        int, typer.Option(min=1, help="The seed's PBKDF2 iterations.")
    ] = SEED_ITERATIONS,
    overwrite: Annotated[
        bool, typer.Option(help="Replace vault values even when they are newer than the seed's.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Decrypt and count; write nothing.")] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Processes deriving the seed's keys.")
    ] = os.cpu_count() or 1,
) -> None:
    """Import the seed application's users' keys, re-sealed under the current master key.

    The seed's master key is read from an environment variable or a file, never the command line.
    """
    seed_master_key = _seed_master_key(master_key_env, master_key_file)
    settings = load_settings()

    async def run() -> seed_import.ImportReport:
        engine = seed_import.seed_engine(source)
        try:
            async with unlocked(settings) as (sessions, keyring):
                total = await seed_import.count_seed_rows(engine)
                with progress("importing", total) as advance:
                    return await seed_import.import_seed(
                        engine,
                        sessions,
                        keyring,
                        seed_master_key,
                        iterations=iterations,
                        overwrite=overwrite,
                        dry_run=dry_run,
                        workers=workers,
                        on_rows=advance,
                    )
        finally:
            await engine.dispose()

    report = asyncio.run(run())
    for sub, reason in report.failures:
        typer.echo(f"keyvault: {sub!r} failed: {reason}", err=True)
    typer.echo(report.summary(dry_run=dry_run))
    if report.failures:
        raise typer.Exit(code=1)


def _seed_master_key(env_name: str | None, path: Path | None) -> str:
    if (env_name is None) == (path is None):
        raise ConfigurationError("give exactly one of --master-key-env and --master-key-file")
    if env_name is not None:
        key = os.environ.get(env_name, "")
        if not key:
            raise ConfigurationError(f"environment variable {env_name} is not set or empty")
        return key
    assert path is not None
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigurationError(
            f"--master-key-file {path} cannot be read: {error.strerror}"
        ) from None
    if not key:
        raise ConfigurationError(f"--master-key-file {path} is empty")
    return key
