"""`keyvault seal recovery-kit` and `keyvault seal recover`: the recovery kit's shares, and the
keyring re-sealed from them (logic in keyvault.master_keys.recovery). Shares are printed once, by
`recovery-kit`, and read by `recover` from a terminal prompt or stdin, never from arguments."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from keyvault.cli.common import SchemaNotReadyError, one_line_failures, unlocked
from keyvault.config import Settings, load_settings
from keyvault.db.engine import create_engine, create_sessionmaker
from keyvault.db.migrations import is_at_head
from keyvault.master_keys import recovery
from keyvault.master_keys.keyring import seal_opener
from keyvault.master_keys.recovery import Recovered, ShareSet


@one_line_failures
def recovery_kit(
    shares: Annotated[
        int, typer.Option("--shares", min=1, max=recovery.MAX_SHARES, help="Shares to make.")
    ],
    threshold: Annotated[
        int, typer.Option("--threshold", min=1, help="How many shares recover the keyring.")
    ],
) -> None:
    """Make a recovery kit: SLIP-39 shares of a recovery key, any THRESHOLD of which re-seal the
    keyring if the master key is lost or the HSM dies. Replaces any kit made before."""
    recovery.check_split(shares, threshold)
    settings = load_settings()

    async def run() -> ShareSet:
        async with unlocked(settings) as (sessions, keyring):
            seal = await seal_opener(settings, keyring)()
            try:
                return await recovery.make_kit(
                    sessions, seal, keyring, shares=shares, threshold=threshold
                )
            finally:
                seal.close()

    made = asyncio.run(run())
    typer.echo(
        f"recovery kit made: any {threshold} of these {shares} shares recover this deployment's "
        "keyring (`keyvault seal recover`). They are printed this once and stored nowhere: give "
        "each to its keeper now. The shares of any kit made before are worthless from now on."
    )
    for position, mnemonic in enumerate(made.mnemonics, start=1):
        typer.echo(f"\nshare {position} of {shares}:\n{mnemonic}")


@one_line_failures
def recover() -> None:
    """Re-seal the keyring under the seal configured now (a new MASTER_ENCRYPTION_KEY, or a new
    HSM key) from the recovery kit's shares, read from the terminal or one a line from stdin."""
    settings = load_settings()
    shares = _read_shares()
    recovered = asyncio.run(_recover(settings, shares))
    typer.echo(
        f"keyring recovered: {recovered.root_keys} root keys and {recovered.audit_keys} audit "
        f"keys are now wrapped by the {recovered.seal} seal; new records are sealed under the "
        f"fresh root key {recovered.current_key_id}, and the service rewraps the others onto it. "
        "These shares have been used: make a new kit (`keyvault seal recovery-kit`)."
    )


async def _recover(settings: Settings, shares: ShareSet) -> Recovered:
    url = settings.database_url.get_secret_value()
    engine = create_engine(url)
    try:
        if not await is_at_head(engine, url):
            raise SchemaNotReadyError()
        return await recovery.recover(create_sessionmaker(engine), settings, shares)
    finally:
        await engine.dispose()


def _read_shares() -> ShareSet:
    """As many shares as the first one says its kit needs."""
    typed: list[str] = []
    needed = 1
    lines = None if sys.stdin.isatty() else iter(sys.stdin)
    while len(typed) < needed:
        position = len(typed) + 1
        if lines is None:
            label = f"share {position}" + (f" of {needed}" if typed else "")
            given = typer.prompt(label, hide_input=True, err=True)
        else:
            given = next((line for line in lines if line.strip()), "")
            if not given:
                raise recovery.RecoveryError(
                    f"stdin ended after {len(typed)} shares; this kit needs {needed}; "
                    "nothing was written"
                )
        mnemonic = " ".join(given.split()).lower()
        threshold = recovery.share_threshold(mnemonic, position)
        if typed and threshold != needed:
            raise recovery.RecoveryError(
                f"share {position} is of another kit than share 1; nothing was written"
            )
        needed = threshold
        typed.append(mnemonic)
    return ShareSet(tuple(typed))
