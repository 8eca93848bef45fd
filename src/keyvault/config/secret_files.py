"""Settings read from files: `KEYVAULT_<NAME>_FILE=/run/secrets/…`, as Docker secrets are."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from keyvault.config.errors import ConfigurationError


class SecretFileSettings(PydanticBaseSettingsSource):
    """`KEYVAULT_<NAME>_FILE=/run/secrets/…`: any setting read from a file, as Docker secrets are.

    A secret in a file stays out of `docker inspect`, the process environment and crash reports.
    Setting both the variable and its `_FILE` twin is refused rather than silently preferring one.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        prefix = self.config.get("env_prefix", "")
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if field.validation_alias is not None:  # MASTER_ENCRYPTION_KEY has its own _FILE
                continue
            variable = f"{prefix}{name}".upper()
            path = os.environ.get(f"{variable}_FILE")
            if not path:
                continue
            if variable in os.environ:
                raise ConfigurationError(f"set {variable} or {variable}_FILE, not both")
            values[name] = read_secret_file(Path(path), f"{variable}_FILE")
        return values


def read_secret_file(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigurationError(f"{name} {path} cannot be read: {error.strerror}") from None
