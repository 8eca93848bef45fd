"""Settings from the environment and a `.env` file. Secrets are SecretStr and never echoed back."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Final

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from keyvault.crypto import MIN_KDF_ITERATIONS

SEED_PLACEHOLDER: Final = "your-super-secret-master-key-change-this-in-production"
MIN_SECRET_LENGTH: Final = 32
MAX_JWT_LEEWAY_SECONDS: Final = 60
DEFAULT_DATABASE_URL: Final = "sqlite+aiosqlite:///./keyvault.db"
STEP_UP_ACTION_NAMES: Final = frozenset({"read", "write", "delete"})
_CHALLENGE_TOKEN: Final = re.compile(r"[A-Za-z0-9._:/-]{1,128}")


class ConfigurationError(Exception):
    """Settings are missing or unsafe; the message is one line and holds no secret."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KEYVAULT_",
        env_file=".env",
        extra="ignore",
        hide_input_in_errors=True,
    )

    master_encryption_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MASTER_ENCRYPTION_KEY")
    )
    master_encryption_key_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("MASTER_ENCRYPTION_KEY_FILE")
    )
    database_url: str = DEFAULT_DATABASE_URL
    jwt_secret: SecretStr | None = None
    jwt_issuer: str = "keyvault"
    jwt_audience: str = "keyvault"
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=MAX_JWT_LEEWAY_SECONDS)
    jwks_url: str | None = None
    jwks_algorithms: Annotated[tuple[str, ...], NoDecode] = ("RS256", "ES256")
    jwks_cache_seconds: int = Field(default=300, ge=1)
    kdf_iterations: int = Field(default=MIN_KDF_ITERATIONS, ge=MIN_KDF_ITERATIONS)
    max_body_bytes: int = Field(default=16 * 1024, ge=1024)
    # Step-up authentication (RFC 9470); see stepup.py. Lists are comma- or space-separated.
    stepup_actions: Annotated[tuple[str, ...], NoDecode] = ()
    stepup_acr: Annotated[tuple[str, ...], NoDecode] = ()
    stepup_amr: Annotated[tuple[str, ...], NoDecode] = ()
    stepup_max_age: int | None = Field(default=None, ge=0)

    @field_validator("stepup_actions", "stepup_acr", "stepup_amr", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part for part in value.replace(",", " ").split() if part)
        return value

    @field_validator("stepup_actions")
    @classmethod
    def _known_stepup_actions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not set(value) <= STEP_UP_ACTION_NAMES:
            raise ValueError(
                f"KEYVAULT_STEPUP_ACTIONS must be some of {sorted(STEP_UP_ACTION_NAMES)}"
            )
        return value

    @field_validator("stepup_acr", "stepup_amr")
    @classmethod
    def _plain_tokens(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # They are quoted into the WWW-Authenticate challenge, so no quotes or escapes.
        if not all(_CHALLENGE_TOKEN.fullmatch(item) for item in value):
            raise ValueError("acr and amr values may hold only letters, digits and -._:/")
        return value

    @model_validator(mode="after")
    def _stepup_names_a_requirement(self) -> Settings:
        if self.stepup_actions and not (
            self.stepup_acr or self.stepup_amr or self.stepup_max_age is not None
        ):
            raise ValueError(
                "KEYVAULT_STEPUP_ACTIONS needs KEYVAULT_STEPUP_ACR, KEYVAULT_STEPUP_AMR "
                "or KEYVAULT_STEPUP_MAX_AGE"
            )
        return self

    @field_validator("jwks_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("jwks_algorithms")
    @classmethod
    def _only_asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"}
        if not value or not set(value) <= allowed:
            raise ValueError(f"KEYVAULT_JWKS_ALGORITHMS must be some of {sorted(allowed)}")
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _jwt_secret_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"KEYVAULT_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value.removeprefix(prefix)
        return value

    @model_validator(mode="after")
    def _some_way_to_verify_tokens(self) -> Settings:
        if self.jwt_secret is None and self.jwks_url is None:
            raise ValueError(
                "set KEYVAULT_JWT_SECRET or KEYVAULT_JWKS_URL so tokens can be verified"
            )
        return self

    def master_key(self) -> str:
        """The master key, read from the variable or the file; refuses missing or weak keys."""
        if self.master_encryption_key is not None:
            key = self.master_encryption_key.get_secret_value()
        elif self.master_encryption_key_file is not None:
            key = _read_secret_file(self.master_encryption_key_file, "MASTER_ENCRYPTION_KEY_FILE")
        else:
            raise ConfigurationError(
                "MASTER_ENCRYPTION_KEY (or MASTER_ENCRYPTION_KEY_FILE) is not set; "
                "run `keyvault init` or `keyvault generate-master-key`"
            )
        refuse_weak_master_key(key)
        return key


def refuse_weak_master_key(key: str) -> None:
    if key.strip() == SEED_PLACEHOLDER or "change-this" in key.lower():
        raise ConfigurationError("the master key is the placeholder from the design document")
    if len(key) < MIN_SECRET_LENGTH:
        raise ConfigurationError(f"the master key must be at least {MIN_SECRET_LENGTH} characters")


def _read_secret_file(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigurationError(f"{name} {path} cannot be read: {error.strerror}") from None


def load_settings() -> Settings:
    """Settings from the environment, with any validation failure turned into one safe line."""
    try:
        return Settings()
    except ValidationError as error:
        reasons = "; ".join(_describe(item) for item in error.errors(include_input=False))
        raise ConfigurationError(f"invalid configuration: {reasons}") from None


def _describe(item: object) -> str:
    details = item if isinstance(item, dict) else {}
    location = ".".join(str(part) for part in details.get("loc", ()))
    message = str(details.get("msg", "invalid"))
    return f"{location}: {message}" if location else message


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
