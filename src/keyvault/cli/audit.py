"""`keyvault audit verify`: walk the stored audit chain and report the first break."""

from __future__ import annotations

import asyncio

import typer

from keyvault.audit.trail import verify_stored_chain
from keyvault.audit.verification import Verification
from keyvault.cli.common import fail, one_line_failures, unlocked
from keyvault.config import Settings, load_settings
from keyvault.master_keys.keyring import kept_audit_keys, seal_opener

audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)


@audit_app.command("verify")
@one_line_failures
def audit_verify() -> None:
    """Walk the audit chain; exit 1 naming the first event that was edited, inserted or removed."""
    settings = load_settings()
    result = asyncio.run(verify_audit(settings))
    if not result.intact:
        fail(
            f"audit chain broken at event {result.first_bad_seq}: {result.problem} "
            f"({result.events_checked} events verified before it)"
        )
    typer.echo(f"audit chain intact: {result.events_checked} events verified")


async def verify_audit(settings: Settings) -> Verification:
    async with unlocked(settings) as (sessions, keyring):
        # The events linked under removed root keys check with the audit keys kept for them.
        seal = await seal_opener(settings, keyring)()
        try:
            audit_keys = await kept_audit_keys(sessions, seal)
        finally:
            seal.close()
        engine = sessions.kw["bind"]
        async with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                # One snapshot: events and head as of one moment while the service keeps writing.
                connection = await connection.execution_options(isolation_level="REPEATABLE READ")
            async with connection.begin():
                return await verify_stored_chain(connection, keyring, audit_keys)
