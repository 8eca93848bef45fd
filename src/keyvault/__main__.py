from keyvault.cli.commands import app

app(prog_name="keyvault")
