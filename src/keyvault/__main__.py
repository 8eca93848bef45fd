from keyvault.cli.app import app

app(prog_name="keyvault")
