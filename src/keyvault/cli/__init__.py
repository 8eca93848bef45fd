"""`keyvault …` on the command line (typer): init, migrate, serve, token, rotate, keys, seal (and
its recovery kit), audit and import-seed. Failures are one line on stderr and exit code 1.
"""
