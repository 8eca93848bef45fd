"""The errors keyvault answers with, as plain exceptions: each names its HTTP status and problem type.

Services raise `Problem` subclasses; keyvault.web.problems turns them into RFC 9457 problem+json.
Every detail is written here or by a service from fixed text: nothing from a request body, a token
or a key.
"""

from __future__ import annotations

from typing import ClassVar

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://keyvault.dev/problems/"


class Problem(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class Unauthorized(Problem):
    """`reason` is a fixed word for metrics (`expired`, `bad_signature`, …), never shown to callers."""

    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(
        self, detail: str, error: str | None = "invalid_token", reason: str = "invalid"
    ) -> None:
        challenge = "Bearer" if error is None else f'Bearer error="{error}"'
        super().__init__(detail, {"WWW-Authenticate": challenge})
        self.reason = reason


class InsufficientUserAuthentication(Unauthorized):
    """RFC 9470: the token is valid but its authentication is too weak or too old for this action."""

    def __init__(self, detail: str, acr_values: str | None, max_age: int | None) -> None:
        challenge = f'Bearer error="insufficient_user_authentication", error_description="{detail}"'
        if acr_values:
            challenge += f', acr_values="{acr_values}"'
        if max_age is not None:
            challenge += f', max_age="{max_age}"'
        Problem.__init__(self, detail, {"WWW-Authenticate": challenge})


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Not allowed"

    def __init__(self, detail: str, reason: str = "forbidden_scope") -> None:
        super().__init__(detail, {"WWW-Authenticate": 'Bearer error="insufficient_scope"'})
        self.reason = reason


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class UnknownProvider(NotFound):
    slug, title = "unknown-provider", "Unknown provider"

    def __init__(self) -> None:
        super().__init__("No provider of that name is configured.")


class KeyExpired(NotFound):
    """The key's `expires_at` has passed: it is no longer handed out, but its record stays."""

    slug, title = "key-expired", "API key expired"

    def __init__(self) -> None:
        super().__init__("This API key has expired; store a new one to replace it.")


class PathNotProxied(NotFound):
    """A proxy path the provider's list does not allow, or one that could mean another path (`..`,
    an encoded slash): refused before anything is sent upstream."""

    slug, title = "path-not-proxied", "Path not proxied"

    def __init__(self) -> None:
        super().__init__("This provider path is not one keyvault forwards.")


class PreconditionFailed(Problem):
    status, slug, title = 412, "precondition-failed", "Precondition failed"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class InvalidRequest(Problem):
    status, slug, title = 422, "invalid-request", "Invalid request"


class KeyRejectedByProvider(InvalidRequest):
    slug, title = "key-rejected-by-provider", "Key rejected by provider"


class TooManyRequests(Problem):
    status, slug, title = 429, "too-many-requests", "Too many requests"

    def __init__(self, detail: str, retry_after_seconds: int) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after_seconds)})


class ClientClosedRequest(Problem):
    """The caller went away before its proxied call ended (nginx's 499); never answered, only
    audited and counted."""

    status, slug, title = 499, "client-closed-request", "Client closed request"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the call ended.")


class RecordUndecryptable(Problem):
    status, slug, title = 500, "record-undecryptable", "Stored key cannot be decrypted"


class ProviderUnavailable(Problem):
    """The provider could not confirm a key on save: unreachable, or an answer that is no verdict."""

    status, slug, title = 502, "provider-unavailable", "Provider unavailable"


class ProviderTimeout(Problem):
    status, slug, title = 504, "provider-timeout", "Provider timed out"


class ServiceUnavailable(Problem):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


class AuditUnavailable(ServiceUnavailable):
    """The audit event could not be stored, so the operation it describes did not happen."""

    slug, title = "audit-unavailable", "Audit trail unavailable"

    def __init__(self) -> None:
        super().__init__(
            "The audit trail cannot record this request right now; nothing was changed or returned.",
            {"Retry-After": "1"},
        )


class KeySetUnavailable(ServiceUnavailable):
    """The token names a key the identity provider's key set may hold, but the set cannot be
    fetched: the token may well be good, so this is no 401."""

    slug, title = "key-set-unavailable", "Identity provider unavailable"
    reason = "key_set_unavailable"

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(
            "The identity provider's signing keys cannot be fetched right now; retry shortly.",
            {"Retry-After": str(retry_after_seconds)},
        )


class KeyringOutdated(ServiceUnavailable):
    """This instance could not load the keyring's new active root key for too long: a write
    sealed under its old key might outlive that key's removal, so it takes none."""

    slug, title = "keyring-outdated", "Keyring outdated"

    def __init__(self) -> None:
        super().__init__(
            "This instance cannot load the keyring's current root key; it takes no writes until "
            "it does. Retry shortly.",
            {"Retry-After": "5"},
        )
