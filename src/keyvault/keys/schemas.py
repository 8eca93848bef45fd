"""Request and response bodies. The incoming key is a SecretStr so no repr or error can show it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from keyvault.db.models import LABEL_MAX_LENGTH
from keyvault.keys.input_rules import (
    API_KEY_MAX_LENGTH,
    API_KEY_PATTERN,
    LABEL_PATTERN,
    api_key_problem,
    label_problem,
)


@dataclass(frozen=True, slots=True)
class UnreadableBody:
    """What a body that is not UTF-8 JSON reads as (keyvault.web.json_body), so that its model
    refuses it as it refuses any invalid body; `reason` names the rule, never the bytes."""

    reason: str


def _clean_api_key(value: SecretStr) -> SecretStr:
    problem = api_key_problem(value.get_secret_value())
    if problem is not None:
        raise ValueError(problem)
    return SecretStr(value.get_secret_value().strip())


def _text_timestamp(value: Any) -> Any:
    # RFC 3339 text only: pydantic would also take a number as seconds since the epoch.
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string with an offset")
    return value


def _in_the_future(value: datetime) -> datetime:
    moment = value.astimezone(UTC)
    if moment <= datetime.now(UTC):
        raise ValueError("must be in the future")
    return moment


def _acceptable_label(value: str) -> str:
    problem = label_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class ApiKeyWrite(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        json_schema_extra={
            "examples": [
                {"api_key": "sk-proj-EXAMPLE0000000000000000000000000000"},
                {
                    "api_key": "sk-ant-EXAMPLE0000000000000000000000000000",
                    "expires_at": "2027-06-30T00:00:00Z",
                    "label": "team key",
                },
            ]
        },
    )

    api_key: Annotated[
        SecretStr,
        AfterValidator(_clean_api_key),
        Field(
            description="The user's third-party API key: surrounding whitespace is trimmed, and"
            f" what remains is 1 to {API_KEY_MAX_LENGTH} characters with no whitespace, control or"
            " format characters (Unicode Cc, Cf) or unpaired surrogates.",
            json_schema_extra={"pattern": API_KEY_PATTERN},
        ),
    ]
    expires_at: Annotated[
        AwareDatetime | None,
        BeforeValidator(_text_timestamp),
        AfterValidator(_in_the_future),
        Field(
            description="When the key stops being handed out (RFC 3339, with an offset; in the"
            " future). After it, reading the key answers 404 `key-expired`; the record stays until"
            " it is replaced or deleted. Absent: it never expires."
        ),
    ] = None
    label: Annotated[
        str | None,
        AfterValidator(_acceptable_label),
        Field(
            description=f"A name for the key, shown in its status: 1 to {LABEL_MAX_LENGTH}"
            " characters, no control or format characters (Unicode Cc, Cf), unpaired surrogates"
            " or whitespace other than spaces.",
            json_schema_extra={"pattern": LABEL_PATTERN},
        ),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _readable(cls, data: Any) -> Any:
        if isinstance(data, UnreadableBody):
            raise PydanticCustomError("body_unreadable", data.reason)
        return data


class KeyStatus(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sub": "google-oauth2|1234",
                    "provider": "openai",
                    "has_api_key": True,
                    "last4": "0000",
                    "label": "team key",
                    "created_at": "2026-11-28T13:05:00Z",
                    "updated_at": "2026-11-28T13:05:00Z",
                    "expires_at": "2027-06-30T00:00:00Z",
                    "expired": False,
                    "version": 1,
                }
            ]
        }
    )

    sub: str
    provider: str
    has_api_key: bool
    last4: str | None = Field(description="The key's last four characters, when it is long enough.")
    label: str | None
    created_at: datetime | None
    updated_at: datetime | None
    expires_at: datetime | None
    expired: bool = Field(description="Whether `expires_at` has passed: the key is not handed out.")
    version: int | None = Field(description="1 on creation, one more on every write.")


class KeyList(BaseModel):
    """A user's keys, one status per provider (never the keys themselves)."""

    sub: str
    keys: list[KeyStatus] = Field(description="By provider name.")


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sub": "google-oauth2|1234",
                    "provider": "openai",
                    "api_key": "sk-proj-EXAMPLE0000000000000000000000000000",
                    "last4": "0000",
                    "label": "team key",
                    "created_at": "2026-11-28T13:05:00Z",
                    "updated_at": "2026-11-28T13:05:00Z",
                    "expires_at": "2027-06-30T00:00:00Z",
                    "version": 1,
                }
            ]
        }
    )

    sub: str
    provider: str
    api_key: str
    last4: str | None
    label: str | None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    version: int


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, served as application/problem+json."""

    type: str
    title: str
    status: int
    detail: str


class AuditEventRead(BaseModel):
    """One audit event. It never holds a key, a ciphertext, a token or a request body."""

    seq: int = Field(description="Position in the tamper-evident chain; newer events are higher.")
    occurred_at: datetime
    actor: str | None = Field(description="The caller's `sub`; empty when the token was refused.")
    client_id: str | None = Field(description="The calling service (`client_id` or `azp`).")
    action: str
    target: str | None = Field(description="The `sub` whose key the request was about.")
    provider: str | None = Field(description="Which provider's key; empty when about no one key.")
    outcome: str
    key_version: int | None
    validation: str | None = Field(
        description="What the provider said of a key checked on save (`?validate=true`): passed,"
        " rejected, unreachable, timeout or provider_error."
    )
    path: str | None = Field(
        description="A call through the provider proxy: the allowed path it matched (as the"
        " providers list it, e.g. `chat/completions` or `audio/*`), never the path itself."
    )
    upstream_status: int | None = Field(description="A proxied call: the provider's status.")
    duration_ms: int | None = Field(description="A proxied call: how long it took, in ms.")
    request_bytes: int | None = Field(description="A proxied call: request body bytes sent on.")
    response_bytes: int | None = Field(
        description="A proxied call: response body bytes passed back."
    )
    request_id: str | None
    client_address: str | None
    user_agent: str | None


class AuditPage(BaseModel):
    events: list[AuditEventRead]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")


class AccessLogEntry(BaseModel):
    occurred_at: datetime
    actor: str | None = Field(description="Who used the key (their `sub`).")
    client_id: str | None = Field(description="Through which service.")
    provider: str | None = Field(description="Which of the user's keys; empty when about all.")
    action: str = Field(description="`use` for a call through the provider proxy, `get` a read, …")
    path: str | None = Field(description="A proxied call: the allowed path it matched.")
    outcome: str


class AccessLogPage(BaseModel):
    events: list[AccessLogEntry]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")
