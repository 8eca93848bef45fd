"""`keyvault token`: mint a development token signed with the configured HS256 secret."""

from __future__ import annotations

from typing import Annotated

import typer

from keyvault.auth.tokens import mint_token
from keyvault.cli.common import one_line_failures
from keyvault.config import ConfigurationError, load_settings


@one_line_failures
def token(
    sub: Annotated[str, typer.Option(help="The user the token speaks for.")],
    scope: Annotated[
        str, typer.Option(help='Space-separated, e.g. "api-key:read api-key:write".')
    ] = "api-key:read api-key:write api-key:delete",
    ttl: Annotated[int, typer.Option(min=1, help="Lifetime in seconds.")] = 3600,
) -> None:
    """Mint an HS256 token for development and print only the token."""
    settings = load_settings()
    if settings.jwt_secret is None:
        raise ConfigurationError("KEYVAULT_JWT_SECRET is not set; tokens cannot be minted")
    typer.echo(mint_token(settings, sub, scope, ttl))
