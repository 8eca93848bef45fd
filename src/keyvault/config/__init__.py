"""Settings from the environment and a `.env` file. Secrets are SecretStr and never echoed back."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Final, Literal

from limits import RateLimitItem, parse_many
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from keyvault.config.errors import ConfigurationError as ConfigurationError
from keyvault.config.secret_files import SecretFileSettings, read_secret_file
from keyvault.crypto.records import MIN_KDF_ITERATIONS
from keyvault.db.engine import DEFAULT_DATABASE_URL, DEFAULT_POOL_SIZE, Timeouts

SEED_PLACEHOLDER: Final = "your-super-secret-master-key-change-this-in-production"
MIN_SECRET_LENGTH: Final = 32
MAX_JWT_LEEWAY_SECONDS: Final = 60
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
REDIS_SCHEMES: Final = ("redis://", "rediss://", "redis+unix://")
STEP_UP_ACTION_NAMES: Final = frozenset({"read", "write", "delete", "use"})
_CHALLENGE_TOKEN: Final = re.compile(r"[A-Za-z0-9._:/-]{1,128}")


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
    # Retired master keys that may still open old records until `keyvault rotate` has rewrapped them.
    master_encryption_key_previous: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MASTER_ENCRYPTION_KEY_PREVIOUS")
    )
    master_encryption_key_previous_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("MASTER_ENCRYPTION_KEY_PREVIOUS_FILE")
    )
    # Secret as a whole: it usually carries the database password.
    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    jwt_secret: SecretStr | None = None
    jwt_issuer: str = "keyvault"
    jwt_audience: str = "keyvault"
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=MAX_JWT_LEEWAY_SECONDS)
    jwks_url: str | None = None
    jwks_algorithms: Annotated[tuple[str, ...], NoDecode] = ("RS256", "ES256")
    jwks_cache_seconds: int = Field(default=300, ge=1)
    # The `typ` headers taken as access tokens from the key set (RFC 9068); see auth.py.
    jwks_token_types: Annotated[tuple[str, ...], NoDecode] = ("at+jwt",)
    kdf_iterations: int = Field(default=MIN_KDF_ITERATIONS, ge=MIN_KDF_ITERATIONS)
    # What wraps the keyring's root keys (master_keys.seals): the master key, or a PKCS#11 token's
    # key; the pkcs11 settings are checked when that seal is opened (master_keys.pkcs11_seal).
    seal: Literal["env", "pkcs11"] = "env"
    pkcs11_library: Path | None = None
    pkcs11_token_label: str | None = None
    pkcs11_pin: SecretStr | None = None
    pkcs11_key_label: str = Field(default="keyvault-seal", min_length=1)
    # The HSM key being replaced: a keyring it still wraps is rewrapped by the current key at start.
    pkcs11_key_label_previous: str | None = None
    # Root-key rotation (master_keys.maintenance): a new root key every N days (0: never), records
    # rewrapped onto it by the running service at N per second.
    root_key_rotation_days: int = Field(default=90, ge=0, le=36_500)
    rewrap_rate: int = Field(default=1000, ge=1, le=1_000_000)
    max_body_bytes: int = Field(default=16 * 1024, ge=1024)
    # Step-up authentication (RFC 9470); see stepup.py. Lists are comma- or space-separated.
    stepup_actions: Annotated[tuple[str, ...], NoDecode] = ()
    stepup_acr: Annotated[tuple[str, ...], NoDecode] = ()
    stepup_amr: Annotated[tuple[str, ...], NoDecode] = ()
    stepup_max_age: int | None = Field(default=None, ge=0)

    @field_validator(
        "stepup_actions", "stepup_acr", "stepup_amr", "jwks_token_types", mode="before"
    )
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            SecretFileSettings(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    # Postgres only. They bound how long a request waits on a dead or hung database: a new
    # connection gives up after the connect timeout; a pooled one whose ping hangs gives up after
    # the statement timeout, and closing it takes up to as long again, so 2 x 0.4 s < 1 s.
    database_connect_timeout: float = Field(default=0.4, gt=0, le=60)
    database_statement_timeout: float = Field(default=0.4, gt=0, le=600)
    database_pool_timeout: float = Field(default=0.5, gt=0, le=60)
    # Per worker, for requests (the audit trail has a pool of its own); no overflow beyond it.
    database_pool_size: int = Field(default=DEFAULT_POOL_SIZE, ge=1)

    # Slow or abusive clients, per worker (keyvault.http_protocol).
    header_timeout: float = Field(default=10, gt=0, le=300)
    body_timeout: float = Field(default=10, gt=0, le=300)
    max_header_bytes: int = Field(default=32 * 1024, ge=4096, le=1024 * 1024)
    max_connections: int = Field(default=1000, ge=1)

    log_level: str = "INFO"
    metrics_token: SecretStr | None = None
    rate_limit: str = "600/minute"
    rate_limit_per_address: str | None = None
    # Per service token (`users:any`): every replica of a service shares its one `sub`.
    rate_limit_service: str = "6000/minute"
    rate_limit_storage: SecretStr = SecretStr("memory://")
    rate_limit_key_prefix: str = Field(default="keyvault", pattern=r"^[A-Za-z0-9._:-]{1,64}$")

    # The providers whose keys are kept: the built-in ones' base URLs, a TOML file naming more (both
    # checked by keyvault.providers at start-up), and how long a PUT ?validate=true waits for one.
    openai_base_url: str = "https://api.openai.com/v1"
    anthropic_base_url: str = "https://api.anthropic.com"
    providers_file: Path | None = None
    provider_timeout: float = Field(default=5, gt=0, le=60)
    # The provider proxy: its wait to connect and between chunks, and the largest body it forwards.
    proxy_timeout: float = Field(default=60, gt=0, le=3600)
    proxy_max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=1024**3)

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

    @field_validator("metrics_token")
    @classmethod
    def _empty_token_is_no_token(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"KEYVAULT_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator("jwks_token_types")
    @classmethod
    def _normalise_token_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("KEYVAULT_JWKS_TOKEN_TYPES needs at least one type (e.g. at+jwt)")
        return tuple(media_type(item) for item in value)

    @field_validator("rate_limit", "rate_limit_per_address", "rate_limit_service")
    @classmethod
    def _parsable_rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate_limit(value)
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _supported_storage(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url != "memory://" and not url.startswith(REDIS_SCHEMES):
            raise ValueError("KEYVAULT_RATE_LIMIT_STORAGE must be memory:// or a redis:// URL")
        return value

    @property
    def address_rate_limit(self) -> str:
        """The per-address limit: its own setting when given, else the per-principal one."""
        given = self.rate_limit_per_address
        return self.rate_limit if given is None else given

    @field_validator("jwt_secret")
    @classmethod
    def _jwt_secret_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"KEYVAULT_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                url = "postgresql+asyncpg://" + url.removeprefix(prefix)
        # Parsed here, where the message is ours: SQLAlchemy's parse error quotes the whole URL.
        try:
            make_url(url)
        except (ArgumentError, ValueError):
            raise ValueError(
                "KEYVAULT_DATABASE_URL is not a database URL "
                "(e.g. postgresql://user:password@host:5432/db)"
            ) from None
        return SecretStr(url)

    @model_validator(mode="after")
    def _some_way_to_verify_tokens(self) -> Settings:
        if self.jwt_secret is None and self.jwks_url is None:
            raise ValueError(
                "set KEYVAULT_JWT_SECRET or KEYVAULT_JWKS_URL so tokens can be verified"
            )
        return self

    def database_timeouts(self) -> Timeouts:
        """The timeouts of every engine and connection the service opens (requests, writes, the
        audit trail, readiness): a refusal's audit event must give up as soon as a read does."""
        return Timeouts(
            connect=self.database_connect_timeout,
            statement=self.database_statement_timeout,
            pool=self.database_pool_timeout,
        )

    def master_key(self) -> str:
        """The master key, read from the variable or the file; refuses missing or weak keys."""
        if self.master_encryption_key is not None:
            key = self.master_encryption_key.get_secret_value()
        elif self.master_encryption_key_file is not None:
            key = read_secret_file(self.master_encryption_key_file, "MASTER_ENCRYPTION_KEY_FILE")
        else:
            raise ConfigurationError(
                "MASTER_ENCRYPTION_KEY (or MASTER_ENCRYPTION_KEY_FILE) is not set; "
                "run `keyvault init` or `keyvault generate-master-key`"
            )
        refuse_weak_master_key(key)
        return key

    def previous_master_keys(self) -> tuple[str, ...]:
        """Retired keys, from the comma-separated variable and then the file (one a line).

        Each must pass the same strength check as the current key; a failure names the entry's
        position, never its value. Duplicates and the current key itself are dropped.
        """
        entries: list[tuple[str, int, str]] = []
        if self.master_encryption_key_previous is not None:
            raw = self.master_encryption_key_previous.get_secret_value()
            source = "MASTER_ENCRYPTION_KEY_PREVIOUS"
            entries += [(source, n, part) for n, part in enumerate(raw.split(","), start=1)]
        if self.master_encryption_key_previous_file is not None:
            source = "MASTER_ENCRYPTION_KEY_PREVIOUS_FILE"
            raw = read_secret_file(self.master_encryption_key_previous_file, source)
            entries += [(source, n, line) for n, line in enumerate(raw.splitlines(), start=1)]
        current = self.master_key()
        keys: list[str] = []
        for source, position, entry in entries:
            key = entry.strip()
            if not key:
                continue
            try:
                refuse_weak_master_key(key)
            except ConfigurationError as error:
                raise ConfigurationError(f"{source} entry {position}: {error}") from None
            if key != current and key not in keys:
                keys.append(key)
        return tuple(keys)


def parse_rate_limit(value: str) -> list[RateLimitItem]:
    """`600/minute`, or several as `10/second;600/minute`; an empty value means no limit."""
    if not value.strip():
        return []
    try:
        return parse_many(value)
    except ValueError:
        raise ValueError(
            "a rate limit looks like 600/minute or 10/second;600/minute (empty disables it)"
        ) from None


def media_type(value: str) -> str:
    """A JOSE `typ` as compared: case-insensitive, `application/` optional (RFC 7515, 4.1.9)."""
    lowered = value.strip().lower()
    return lowered.removeprefix("application/")


def refuse_weak_master_key(key: str) -> None:
    if key.strip() == SEED_PLACEHOLDER or "change-this" in key.lower():
        raise ConfigurationError("the master key is the placeholder from the design document")
    if len(key) < MIN_SECRET_LENGTH:
        raise ConfigurationError(f"the master key must be at least {MIN_SECRET_LENGTH} characters")


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
