"""The errors a call raises: `KeyVaultError`, and a subclass for each kind of refusal.

Each keeps what keyvault's problem+json answer said (status, problem type, title, detail) and the
request id, so a refusal can be matched with the server's audit trail. None ever holds the bearer
token, a client secret or an API key: every text taken from an answer is scrubbed of the secrets
the request carried before it is kept, and no error keeps the request or the response object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx

PROBLEM_TYPE_BASE: Final = "https://keyvault.dev/problems/"
REDACTED: Final = "[redacted]"
_DELAY_SECONDS = re.compile(r"[0-9]{1,10}")
_CHALLENGE_ERROR = re.compile(r'error="([^"]*)"')


class KeyVaultError(Exception):
    """Any failure of a keyvault call. `status` is the HTTP status, None when there was no answer."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        problem_type: str | None = None,
        title: str | None = None,
        detail: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.problem_type = problem_type
        self.title = title
        self.detail = detail
        self.request_id = request_id

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, problem_type={self.problem_type!r},"
            f" detail={self.detail!r}, request_id={self.request_id!r})"
        )


class ConfigurationError(KeyVaultError):
    """The client is not configured (an environment variable is missing or malformed)."""


class Unauthorized(KeyVaultError):
    """401: no valid token. `error` is the challenge's OAuth error (`invalid_token`,
    `insufficient_user_authentication`, …) when keyvault gave one."""

    def __init__(self, message: str, *, error: str | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.error = error


class TokenError(Unauthorized):
    """The token endpoint refused the client credentials or answered something unusable; `error`
    is its OAuth error code (`invalid_client`, `invalid_scope`, …) when it gave one."""


class Forbidden(KeyVaultError):
    """403: the token lacks the scope for this action or this user."""


class NotFound(KeyVaultError):
    """404 that is not "no key": a route or provider keyvault does not have (for no key,
    `get_api_key` gives None and `delete_api_key` False)."""


class KeyExpired(NotFound):
    """404 `key-expired`: the key's `expires_at` has passed (`get_api_key` gives None instead)."""


class UnknownProvider(NotFound):
    """404 `unknown-provider`: keyvault has no provider of that name configured."""


class Conflict(KeyVaultError):
    """409 or 412: the key changed since the ETag given as `if_match` was issued."""


class PayloadTooLarge(KeyVaultError):
    """413: the request body is larger than keyvault accepts."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One broken rule of a 422: the field (`api_key`, `label`, `path.sub`, …) and the rule."""

    field: str | None
    rule: str


class InvalidRequest(KeyVaultError):
    """422: `errors` lists each broken rule; `field` and `rule` are the first one's."""

    def __init__(self, message: str, *, errors: tuple[FieldError, ...], **fields: Any) -> None:
        super().__init__(message, **fields)
        self.errors = errors
        self.field = errors[0].field if errors else None
        self.rule = errors[0].rule if errors else None


class KeyRejected(InvalidRequest):
    """422 `key-rejected-by-provider`: validation on save found the provider refusing the key."""


class RateLimited(KeyVaultError):
    """429: `retry_after` is how many seconds keyvault asked to wait (None when it did not say)."""

    def __init__(self, message: str, *, retry_after: float | None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class Unavailable(KeyVaultError):
    """503, or no answer at all (unreachable, timed out): worth retrying later."""

    def __init__(self, message: str, *, retry_after: float | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class ProviderUnavailable(Unavailable):
    """502 or 504 from validation on save: the provider could not be asked about the key."""


class ServerError(KeyVaultError):
    """500 and other answers keyvault gives for a fault of its own (an undecryptable record, …)."""


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret in it replaced, longest first (a key may contain a shorter one)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def retry_after_seconds(response: httpx.Response, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now (delay-seconds or an HTTP-date), None when absent or bad."""
    value = response.headers.get("Retry-After", "").strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def unreachable(exc: httpx.TransportError, what: str = "keyvault") -> Unavailable:
    """The error for a request that got no answer; the transport's own message names no secret."""
    return Unavailable(f"{what} did not answer: {type(exc).__name__}: {exc}".rstrip(": "))


def error_from_response(response: httpx.Response, secrets: Iterable[str]) -> KeyVaultError:
    """The typed error for a refusal, from its status and its problem+json body."""
    secrets = tuple(secrets)
    problem = _problem_fields(response, secrets)
    status = response.status_code
    slug = problem["slug"]
    fields: dict[str, Any] = {
        "status": status,
        "problem_type": problem["type"],
        "title": problem["title"],
        "detail": problem["detail"],
        "request_id": response.headers.get("X-Request-ID"),
    }
    message = f"keyvault answered {status} {problem['title'] or response.reason_phrase}"
    if problem["detail"]:
        message += f": {problem['detail']}"
    if status == 401:
        challenge = _CHALLENGE_ERROR.search(response.headers.get("WWW-Authenticate", ""))
        return Unauthorized(message, error=challenge[1] if challenge else None, **fields)
    if status == 422:
        if slug == "key-rejected-by-provider":
            return KeyRejected(message, errors=field_errors(problem["detail"]), **fields)
        return InvalidRequest(message, errors=field_errors(problem["detail"]), **fields)
    if status == 429:
        return RateLimited(message, retry_after=retry_after_seconds(response), **fields)
    if status == 503:
        return Unavailable(message, retry_after=retry_after_seconds(response), **fields)
    kind: type[KeyVaultError]
    if status == 404:
        kind = {"key-expired": KeyExpired, "unknown-provider": UnknownProvider}.get(
            slug or "", NotFound
        )
    elif status in (502, 504):
        provider = slug in ("provider-unavailable", "provider-timeout")
        kind = ProviderUnavailable if provider else Unavailable
    else:
        kind = _BY_STATUS.get(status, ServerError if status >= 500 else KeyVaultError)
    return kind(message, **fields)


_BY_STATUS: Final[dict[int, type[KeyVaultError]]] = {
    403: Forbidden,
    409: Conflict,
    412: Conflict,
    413: PayloadTooLarge,
}


def problem_slug(response: httpx.Response) -> str | None:
    """The keyvault problem type's last part (`not-found`, `key-expired`, …), if the body has one."""
    slug: str | None = _problem_fields(response, ())["slug"]
    return slug


def field_errors(detail: str | None) -> tuple[FieldError, ...]:
    """keyvault's 422 detail, `location: rule; location: rule`, as field errors."""
    errors: list[FieldError] = []
    for reason in (detail or "").split("; "):
        if not reason:
            continue
        location, separator, rule = reason.partition(": ")
        if not separator or " " in location:
            location, rule = "", reason
        rule = rule.removeprefix("Value error, ")
        errors.append(FieldError(location or None, rule))
    return tuple(errors)


def _problem_fields(response: httpx.Response, secrets: tuple[str, ...]) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": None, "title": None, "detail": None, "slug": None}
    if "json" not in response.headers.get("Content-Type", ""):
        return fields
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return fields
    if not isinstance(body, dict):
        return fields
    for name in ("type", "title", "detail"):
        value = body.get(name)
        if isinstance(value, str):
            fields[name] = scrub(value, secrets)
    problem_type = fields["type"]
    if isinstance(problem_type, str) and problem_type.startswith(PROBLEM_TYPE_BASE):
        fields["slug"] = problem_type[len(PROBLEM_TYPE_BASE) :]
    return fields
