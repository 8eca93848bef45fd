"""The one error configuration raises (keyvault.config re-exports it)."""


class ConfigurationError(Exception):
    """Settings are missing or unsafe; the message is one line and holds no secret."""
