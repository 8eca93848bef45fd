"""How the routes under `/users/{sub}/` match a path: the converter FastAPI's routes spell the sub
with, and `match_key_path`, the key operations' own matcher (web.key_endpoints).

Their paths spell the sub `{sub:subject}`. Starlette's `{sub:path}` is `.*` in a pattern ending in
`$`: `.` stops at a newline, so a sub holding `%0A` would match no route (an unaudited 404 before
authentication, where any other invalid sub gets 401 or 422), and `$` also matches before a final
newline, so `/users/alice/api-key%0A` would be served as Alice's key. A `subject` takes any
character, and no path ending in a newline.
"""

from __future__ import annotations

from typing import Final

from starlette.convertors import PathConvertor, register_url_convertor

from keyvault.providers.registry import OPENAI


class SubjectConvertor(PathConvertor):
    regex = r"(?![\s\S]*\n\Z)[\s\S]*"


# Registered on import, before the routes spelling it are declared (they import SUBJECT_PATH).
register_url_convertor("subject", SubjectConvertor())
SUBJECT_PATH: Final = "/users/{sub:subject}"

# The key operations' route templates (web.key_routes documents them).
KEY_ROUTE: Final = "/users/{sub}/api-key"
STATUS_ROUTE: Final = "/users/{sub}/api-key/status"
LIST_ROUTE: Final = "/users/{sub}/api-keys"
PROVIDER_KEY_ROUTE: Final = "/users/{sub}/api-keys/{provider}"
PROVIDER_STATUS_ROUTE: Final = "/users/{sub}/api-keys/{provider}/status"

USERS_PREFIX: Final = "/users/"
KEY_SUFFIX: Final = "/api-key"
STATUS_SUFFIX: Final = "/api-key/status"
KEYS_SUFFIX: Final = "/api-keys"
KEYS_INFIX: Final = "/api-keys/"
PROVIDER_STATUS_SUFFIX: Final = "/status"


def match_key_path(path: str) -> tuple[str, str, str | None] | None:
    """(route template, sub, provider name) of a key path, or None for any other path.

    Matched from the end, as `{sub:subject}` matches: the sub is anything, `/` and a newline
    included (refused as an invalid sub), and a provider name is one segment, never one of the
    segments matched before it (providers.RESERVED_NAMES). The paths that name no provider are the
    openai key's, and the list of all of a user's keys (provider None).
    """
    if not path.startswith(USERS_PREFIX):
        return None
    rest = path[len(USERS_PREFIX) - 1 :]  # from the slash before the sub, which may be empty
    if rest.endswith(KEY_SUFFIX) and len(rest) > len(KEY_SUFFIX):
        return KEY_ROUTE, rest[1 : -len(KEY_SUFFIX)], OPENAI
    if rest.endswith(STATUS_SUFFIX) and len(rest) > len(STATUS_SUFFIX):
        return STATUS_ROUTE, rest[1 : -len(STATUS_SUFFIX)], OPENAI
    if rest.endswith(KEYS_SUFFIX) and len(rest) > len(KEYS_SUFFIX):
        return LIST_ROUTE, rest[1 : -len(KEYS_SUFFIX)], None
    if rest.endswith(PROVIDER_STATUS_SUFFIX):
        matched = _provider_path(PROVIDER_STATUS_ROUTE, rest[: -len(PROVIDER_STATUS_SUFFIX)])
        if matched is not None:
            return matched
    return _provider_path(PROVIDER_KEY_ROUTE, rest)


def _provider_path(route: str, rest: str) -> tuple[str, str, str | None] | None:
    infix = rest.rfind(KEYS_INFIX)
    provider = rest[infix + len(KEYS_INFIX) :]
    if infix <= 0 or not provider or "/" in provider:
        return None
    return route, rest[1:infix], provider
