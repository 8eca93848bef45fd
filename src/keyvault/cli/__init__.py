"""`keyvault …` on the command line (typer): init, migrate, serve, token, rotate, keys, audit and
import-seed. Failures are one line on stderr and exit code 1.
"""
