from keyvault.cli import app

app(prog_name="keyvault")
