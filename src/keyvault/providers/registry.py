"""What keyvault knows of a provider: its name (a path segment of its keys' routes), its base URL,
how a call sends a key (`Authorization: Bearer …` or a header of the provider's own, plus fixed
headers such as `anthropic-version`), the cheap authenticated path that checks a key, and the
paths the provider proxy may forward (keyvault.proxy).

Two providers are built in, `openai` and `anthropic`, with base URLs from the settings; more come
from KEYVAULT_PROVIDERS_FILE (keyvault.providers.providers_file, which builds the registry once, at
start-up).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from keyvault.crypto.records import V2_PROVIDER
from keyvault.db.models import PROVIDER_NAME_MAX_LENGTH

OPENAI: Final = V2_PROVIDER  # the key today's /users/{sub}/api-key routes serve
ANTHROPIC: Final = "anthropic"
ANTHROPIC_VERSION: Final = "2023-06-01"
BEARER_HEADER: Final = "authorization"

# Lower-case letters, digits, `-` and `_`, starting with a letter: a path segment as it is.
PROVIDER_NAME_PATTERN: Final = rf"^[a-z][a-z0-9_-]{{0,{PROVIDER_NAME_MAX_LENGTH - 1}}}$"
_PROVIDER_NAME: Final = re.compile(PROVIDER_NAME_PATTERN)
# The segments of the routes beside `/api-keys/{provider}`: a provider so named would be ambiguous.
RESERVED_NAMES: Final = frozenset({"api-key", "api-keys", "status", "access-log"})

# What `/proxy/{provider}/…` forwards for the built-in providers, relative to their base URLs: a
# path as it is, or `prefix/*` for every path below the prefix.
OPENAI_PROXY_PATHS: Final = (
    "chat/completions",
    "completions",
    "responses",
    "embeddings",
    "models",
    "moderations",
    "audio/*",
    "images/*",
)
ANTHROPIC_PROXY_PATHS: Final = ("v1/messages", "v1/messages/count_tokens", "v1/models")
PROXY_PATH_MAX_LENGTH: Final = 128
_PROXY_SEGMENT: Final = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*")


def provider_name_problem(name: str) -> str | None:
    """Why `name` cannot name a provider, or None when it can."""
    if not _PROVIDER_NAME.fullmatch(name):
        return (
            f"must be 1 to {PROVIDER_NAME_MAX_LENGTH} lower-case letters, digits, - or _,"
            " starting with a letter"
        )
    if name in RESERVED_NAMES:
        return f"is reserved ({', '.join(sorted(RESERVED_NAMES))} are)"
    return None


def base_url_problem(url: str) -> str | None:
    """Why `url` cannot be a provider's base URL, or None when it can: http(s), a host, and no
    credentials, query or fragment (it is joined with paths, and may be logged)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        return "must be an http:// or https:// URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if "@" in parts.netloc or "?" in url or "#" in url:
        return "must hold no credentials, query or fragment"
    return None


def proxy_path_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be one of a provider's proxied paths, or None when it can: segments of
    letters, digits and `._~-` (none `.` or `..`), a `*` only as the whole last segment."""
    if not 0 < len(pattern) <= PROXY_PATH_MAX_LENGTH:
        return f"must be 1 to {PROXY_PATH_MAX_LENGTH} characters"
    segments = pattern.split("/")
    if segments[-1] == "*" and len(segments) > 1:
        segments.pop()
    if not all(_PROXY_SEGMENT.fullmatch(segment) for segment in segments):
        return (
            "must be path segments of letters, digits and ._~- (not . or ..), optionally ending"
            " in /*"
        )
    return None


@dataclass(frozen=True, slots=True)
class Provider:
    """One provider. Nothing here is secret; a key only passes through `key_headers`."""

    name: str
    base_url: str  # without a trailing slash
    validation_path: str  # relative to base_url, without a leading slash
    key_header: str = BEARER_HEADER  # lower-case; `authorization` carries `Bearer <key>`
    headers: tuple[tuple[str, str], ...] = ()  # sent with every call, besides the key
    proxy_paths: tuple[str, ...] = ()  # what the proxy forwards (see proxy_path_problem)

    @property
    def bearer(self) -> bool:
        return self.key_header == BEARER_HEADER

    def url(self, path: str) -> str:
        """The URL of `path` (relative, as validation_path is) under the base URL."""
        return f"{self.base_url}/{path}"

    @staticmethod
    def sendable(api_key: str) -> bool:
        """Whether `api_key` can travel in an HTTP header: printable ASCII only (RFC 9110 §5.5
        allows no more portably, and httpx refuses the rest)."""
        return api_key.isascii() and api_key.isprintable()

    def key_headers(self, api_key: str) -> list[tuple[str, str]]:
        """The headers of a call made with `api_key`, the provider's way. They hold the key: never
        log them."""
        value = f"Bearer {api_key}" if self.bearer else api_key
        return [*self.headers, (self.key_header, value)]


def builtin_providers(openai_base_url: str, anthropic_base_url: str) -> list[Provider]:
    return [
        Provider(OPENAI, openai_base_url.rstrip("/"), "models", proxy_paths=OPENAI_PROXY_PATHS),
        Provider(
            ANTHROPIC,
            anthropic_base_url.rstrip("/"),
            "v1/models",
            key_header="x-api-key",
            headers=(("anthropic-version", ANTHROPIC_VERSION),),
            proxy_paths=ANTHROPIC_PROXY_PATHS,
        ),
    ]


class Providers:
    """The configured providers, by name."""

    def __init__(self, providers: Iterable[Provider]) -> None:
        self._by_name = {provider.name: provider for provider in providers}

    def __repr__(self) -> str:
        return f"Providers({sorted(self._by_name)!r})"

    def get(self, name: str) -> Provider | None:
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Provider]:
        return iter(self._by_name.values())

    @property
    def names(self) -> list[str]:
        return list(self._by_name)
