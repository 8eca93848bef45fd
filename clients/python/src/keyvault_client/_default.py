"""The process's own client, configured from the environment on first use: what
`get_user_api_key` and the provider clients use when given no `vault`."""

from __future__ import annotations

import threading

from keyvault_client._protocol import DEFAULT_PROVIDER
from keyvault_client._sync import KeyVault

_lock = threading.Lock()
_vault: KeyVault | None = None


def default_vault() -> KeyVault:
    """`KeyVault.from_env()`, made once and shared by every caller in the process."""
    global _vault
    with _lock:
        if _vault is None:
            _vault = KeyVault.from_env()
        return _vault


def close_default_vault() -> None:
    """Close the shared client; the next call makes a new one from the environment as it is then."""
    global _vault
    with _lock:
        vault, _vault = _vault, None
    if vault is not None:
        vault.close()


def get_user_api_key(sub: str, provider: str = DEFAULT_PROVIDER) -> str | None:
    """The user's key for `provider` (OpenAI by default), or None when there is none or it has
    expired, from the keyvault named by KEYVAULT_URL (see `KeyVault.from_env`)."""
    return default_vault().get_api_key(sub, provider)
