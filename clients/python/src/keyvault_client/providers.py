"""The providers' official SDK clients, pointed at keyvault's provider proxy (`/proxy/{provider}`):
the SDK sends its calls to keyvault with the service's keyvault token and names the user in
`X-Keyvault-User`; keyvault adds the user's own key upstream, so the key never reaches the caller.

`openai_client` needs `keyvault-client[openai]`, `anthropic_client` `keyvault-client[anthropic]`.
The OpenAI SDK asks for the token before each request, so client-credentials tokens are refreshed
as they near expiry; the Anthropic SDK takes a fixed key, the token current when it was made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from keyvault_client._default import default_vault
from keyvault_client._sync import KeyVault

if TYPE_CHECKING:
    import anthropic
    import openai

USER_HEADER: Final = "X-Keyvault-User"


def proxy_url(vault: KeyVault, provider: str) -> str:
    return f"{vault.base_url}/proxy/{quote(provider, safe='')}"


def user_header(sub: str) -> dict[str, str]:
    """`X-Keyvault-User`, the sub percent-encoded as in a path (so any sub fits in a header)."""
    if not isinstance(sub, str) or not sub:
        raise ValueError("sub must be a non-empty str")
    return {USER_HEADER: quote(sub, safe="")}


def openai_client(sub: str, *, vault: KeyVault | None = None, **options: Any) -> openai.OpenAI:
    """`openai.OpenAI` calling OpenAI through keyvault with `sub`'s key. `vault` defaults to the
    client configured from the environment; `options` go to `openai.OpenAI` as they are."""
    try:
        import openai
    except ImportError:
        raise ImportError(
            "openai_client needs the openai package: pip install 'keyvault-client[openai]'"
        ) from None
    vault = vault if vault is not None else default_vault()
    headers = {**options.pop("default_headers", {}), **user_header(sub)}
    return openai.OpenAI(
        base_url=proxy_url(vault, "openai"),
        api_key=vault.access_token,
        default_headers=headers,
        **options,
    )


def anthropic_client(
    sub: str, *, vault: KeyVault | None = None, **options: Any
) -> anthropic.Anthropic:
    """`anthropic.Anthropic` calling Anthropic through keyvault with `sub`'s key; as openai_client."""
    try:
        import anthropic
    except ImportError:
        raise ImportError(
            "anthropic_client needs the anthropic package: pip install 'keyvault-client[anthropic]'"
        ) from None
    vault = vault if vault is not None else default_vault()
    headers = {**options.pop("default_headers", {}), **user_header(sub)}
    return anthropic.Anthropic(
        base_url=proxy_url(vault, "anthropic"),
        api_key=vault.access_token(),
        default_headers=headers,
        **options,
    )
