"""Request and response bodies. The incoming key is a SecretStr so no repr or error can show it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_core import PydanticCustomError

from keyvault.keys.input_rules import API_KEY_MAX_LENGTH, API_KEY_PATTERN, api_key_problem


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


class ApiKeyWrite(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        json_schema_extra={
            "examples": [{"api_key": "sk-proj-EXAMPLE0000000000000000000000000000"}]
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
                    "has_api_key": True,
                    "last4": "0000",
                    "created_at": "2026-11-28T13:05:00Z",
                    "updated_at": "2026-11-28T13:05:00Z",
                    "version": 1,
                }
            ]
        }
    )

    sub: str
    has_api_key: bool
    last4: str | None = Field(description="The key's last four characters, when it is long enough.")
    created_at: datetime | None
    updated_at: datetime | None
    version: int | None = Field(description="1 on creation, one more on every write.")


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sub": "google-oauth2|1234",
                    "api_key": "sk-proj-EXAMPLE0000000000000000000000000000",
                    "last4": "0000",
                    "created_at": "2026-11-28T13:05:00Z",
                    "updated_at": "2026-11-28T13:05:00Z",
                    "version": 1,
                }
            ]
        }
    )

    sub: str
    api_key: str
    last4: str | None
    created_at: datetime
    updated_at: datetime
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
    outcome: str
    key_version: int | None
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
    action: str
    outcome: str


class AccessLogPage(BaseModel):
    events: list[AccessLogEntry]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")
