"""The `keyvault` typer app (the console script): every command, registered in `--help` order.
Failures are one line on stderr and exit code 1.
"""

from __future__ import annotations

import typer

from keyvault.cli import seed, serve, setup, tokens
from keyvault.cli.audit import audit_app
from keyvault.cli.keys import keys_app, rotate
from keyvault.cli.seal import seal_app

app = typer.Typer(
    help="keyvault: users' third-party API keys, encrypted at rest, served over authenticated HTTP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command("generate-master-key")(setup.generate_master_key)
app.command()(setup.init)
app.command()(setup.migrate)
app.command()(serve.serve)
app.command()(tokens.token)
app.command()(rotate)
app.command("import-seed")(seed.import_seed)
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(seal_app, name="seal")
