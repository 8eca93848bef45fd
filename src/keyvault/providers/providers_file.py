"""KEYVAULT_PROVIDERS_FILE: more providers, in TOML, one table each under `providers`:

    [providers.mistral]
    base_url = "https://api.mistral.ai/v1"
    validation_path = "models"                # GET {base_url}/models checks a key on save
    # key_header = "x-api-key"                # the key as that header's value; default: Bearer
    # headers = { "x-api-version" = "2024-06-01" }   # fixed headers sent with every call
    proxy_paths = ["chat/completions", "models/*"]  # what /proxy/mistral/… forwards; default none

    [providers.openai]                        # a built-in provider: its proxy_paths alone
    proxy_paths = ["chat/completions", "embeddings"]

Anything the file gets wrong (syntax, an unknown field, a bad name, URL, header or path) refuses
start-up with one line naming the file and the entry; a built-in provider's table may set only
`proxy_paths` (its base URL has a setting of its own).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any, Final

from keyvault.config import ConfigurationError, Settings
from keyvault.providers.registry import (
    BEARER_HEADER,
    Provider,
    Providers,
    base_url_problem,
    builtin_providers,
    provider_name_problem,
    proxy_path_problem,
)

_FIELDS: Final = frozenset({"base_url", "validation_path", "key_header", "headers", "proxy_paths"})
_BUILTIN_FIELDS: Final = frozenset({"proxy_paths"})
MAX_PROXY_PATHS: Final = 64
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
_HEADER_VALUE: Final = re.compile(r"[\x20-\x7e]{0,256}")
_PATH: Final = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@%/-]{1,256}")
# Set by the HTTP client itself, or by keyvault for the key: a providers file may not name them.
_MANAGED_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "cookie", BEARER_HEADER}
)


def load_providers(settings: Settings) -> Providers:
    """The built-in providers and those of KEYVAULT_PROVIDERS_FILE; ConfigurationError (one line)
    when a base URL setting or the file cannot be used."""
    for setting, url in (
        ("KEYVAULT_OPENAI_BASE_URL", settings.openai_base_url),
        ("KEYVAULT_ANTHROPIC_BASE_URL", settings.anthropic_base_url),
    ):
        problem = base_url_problem(url)
        if problem is not None:
            raise ConfigurationError(f"{setting} {problem}")
    builtin = builtin_providers(settings.openai_base_url, settings.anthropic_base_url)
    path = settings.providers_file
    providers = read_providers_file(path, builtin) if path is not None else builtin
    return Providers(providers)


def read_providers_file(path: Path, builtin: list[Provider]) -> list[Provider]:
    """The built-in providers (with any proxy_paths the file gives them), then the file's own."""
    where = f"KEYVAULT_PROVIDERS_FILE {path}"
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise ConfigurationError(f"{where} cannot be read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{where} is not valid TOML: {error}") from None
    unknown = sorted(set(document) - {"providers"})
    if unknown:
        raise ConfigurationError(f"{where}: unknown top-level entry {unknown[0]!r}")
    tables = document.get("providers", {})
    if not isinstance(tables, dict):
        raise ConfigurationError(f"{where}: `providers` must be a table of providers")
    providers = {provider.name: provider for provider in builtin}
    for name, table in tables.items():
        entry = f"{where}: providers.{name}"
        problem = provider_name_problem(name)
        if problem is not None:
            raise ConfigurationError(f"{where}: provider name {name!r} {problem}")
        if not isinstance(table, dict):
            raise ConfigurationError(f"{entry} must be a table")
        if name in providers:
            if set(table) - _BUILTIN_FIELDS:
                raise ConfigurationError(
                    f"{entry} is built in: only its proxy_paths can be set here (set"
                    f" KEYVAULT_{name.upper()}_BASE_URL for its base URL)"
                )
            paths = _proxy_paths(table, entry)
            providers[name] = dataclasses.replace(providers[name], proxy_paths=paths)
            continue
        providers[name] = _provider(name, table, entry)
    return list(providers.values())


def _provider(name: str, table: dict[str, Any], entry: str) -> Provider:
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise ConfigurationError(
            f"{entry}: unknown field {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})"
        )
    base_url = _text(table, "base_url", entry, required=True)
    problem = base_url_problem(base_url)
    if problem is not None:
        raise ConfigurationError(f"{entry}.base_url {problem}")
    validation_path = _text(table, "validation_path", entry, required=True).lstrip("/")
    if not _PATH.fullmatch(validation_path) or ".." in validation_path.split("/"):
        raise ConfigurationError(
            f"{entry}.validation_path must be a path under the base URL (no query, no ..)"
        )
    key_header = _text(table, "key_header", entry, required=False) or BEARER_HEADER
    if not _HEADER_NAME.fullmatch(key_header):
        raise ConfigurationError(f"{entry}.key_header must be an HTTP header name")
    key_header = key_header.lower()
    if key_header in _MANAGED_HEADERS - {BEARER_HEADER}:
        raise ConfigurationError(f"{entry}.key_header cannot be {key_header}")
    return Provider(
        name,
        base_url.rstrip("/"),
        validation_path,
        key_header=key_header,
        headers=_headers(table.get("headers", {}), key_header, entry),
        proxy_paths=_proxy_paths(table, entry),
    )


def _proxy_paths(table: dict[str, Any], entry: str) -> tuple[str, ...]:
    paths = table.get("proxy_paths", [])
    if not isinstance(paths, list) or len(paths) > MAX_PROXY_PATHS:
        raise ConfigurationError(
            f"{entry}.proxy_paths must be a list of at most {MAX_PROXY_PATHS} paths"
        )
    allowed = []
    for path in paths:
        pattern = path.strip().lstrip("/") if isinstance(path, str) else ""
        problem = proxy_path_problem(pattern) if pattern else "must be a non-empty string"
        if problem is not None:
            raise ConfigurationError(f"{entry}.proxy_paths: {path!r} {problem}")
        allowed.append(pattern)
    return tuple(dict.fromkeys(allowed))


def _text(table: dict[str, Any], field: str, entry: str, *, required: bool) -> str:
    value = table.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{entry}.{field} must be a non-empty string")
    return value.strip()


def _headers(headers: object, key_header: str, entry: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(headers, dict):
        raise ConfigurationError(f"{entry}.headers must be a table of header names and values")
    fixed = []
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigurationError(f"{entry}.headers: {name!r} is not an HTTP header name")
        lowered = name.lower()
        if lowered in _MANAGED_HEADERS or lowered == key_header:
            raise ConfigurationError(f"{entry}.headers cannot set {lowered}")
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise ConfigurationError(
                f"{entry}.headers.{name} must be a string of printable ASCII (at most 256)"
            )
        fixed.append((lowered, value))
    return tuple(fixed)
