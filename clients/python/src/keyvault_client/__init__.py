"""keyvault's Python client: `KeyVault` and `AsyncKeyVault` read, store and delete users' provider
API keys; `get_user_api_key(sub)` does it in one line, configured from the environment.

Tokens come from a string, a callable or `ClientCredentials`; connect errors, 503 and 429 are
retried; every refusal is a `KeyVaultError` subclass whose text never holds a token or a key.
The guide is docs/client.md in keyvault's repository.
"""

from keyvault_client._async import AsyncKeyVault
from keyvault_client._cache import MAX_TTL_SECONDS
from keyvault_client._credentials import ClientCredentials
from keyvault_client._default import close_default_vault, default_vault, get_user_api_key
from keyvault_client._errors import (
    ConfigurationError,
    Conflict,
    FieldError,
    Forbidden,
    InvalidRequest,
    KeyExpired,
    KeyRejected,
    KeyVaultError,
    NotFound,
    PayloadTooLarge,
    ProviderUnavailable,
    RateLimited,
    ServerError,
    TokenError,
    Unauthorized,
    Unavailable,
    UnknownProvider,
)
from keyvault_client._models import AccessLogEntry, KeyStatus, UnreadableAnswer
from keyvault_client._sync import KeyVault
from keyvault_client._version import __version__
from keyvault_client.providers import anthropic_client, openai_client

__all__ = [
    "MAX_TTL_SECONDS",
    "AccessLogEntry",
    "AsyncKeyVault",
    "ClientCredentials",
    "ConfigurationError",
    "Conflict",
    "FieldError",
    "Forbidden",
    "InvalidRequest",
    "KeyExpired",
    "KeyRejected",
    "KeyStatus",
    "KeyVault",
    "KeyVaultError",
    "NotFound",
    "PayloadTooLarge",
    "ProviderUnavailable",
    "RateLimited",
    "ServerError",
    "TokenError",
    "Unauthorized",
    "Unavailable",
    "UnknownProvider",
    "UnreadableAnswer",
    "__version__",
    "anthropic_client",
    "close_default_vault",
    "default_vault",
    "get_user_api_key",
    "openai_client",
]
