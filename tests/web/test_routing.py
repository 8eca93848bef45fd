"""Which key path a request names: matched from the end, the sub anything, a provider one segment."""

from __future__ import annotations

import pytest

from keyvault.web.routing import match_key_path

KEY = "/users/{sub}/api-key"
STATUS = "/users/{sub}/api-key/status"
LIST = "/users/{sub}/api-keys"
PKEY = "/users/{sub}/api-keys/{provider}"
PSTATUS = "/users/{sub}/api-keys/{provider}/status"


@pytest.mark.parametrize(
    ("path", "matched"),
    [
        ("/users/alice/api-key", (KEY, "alice", "openai")),
        ("/users/alice/api-key/status", (STATUS, "alice", "openai")),
        ("/users/alice/api-keys", (LIST, "alice", None)),
        ("/users/alice/api-keys/anthropic", (PKEY, "alice", "anthropic")),
        ("/users/alice/api-keys/anthropic/status", (PSTATUS, "alice", "anthropic")),
        ("/users//api-keys/openai", (PKEY, "", "openai")),  # an empty sub: refused as invalid
        ("/users/a/b/api-keys/openai", (PKEY, "a/b", "openai")),
        ("/users/t/api-keys/x/api-keys/openai", (PKEY, "t/api-keys/x", "openai")),
        ("/users/t/api-keys/x/api-key", (KEY, "t/api-keys/x", "openai")),
        ("/users/t/api-keys/status", (PKEY, "t", "status")),  # no such provider: 404
        ("/users/a\nb/api-keys/openai", (PKEY, "a\nb", "openai")),
        ("/users/api-keys/openai", None),
        ("/users/api-key", None),
        ("/users/alice/api-keys/", None),
        ("/users/alice/api-keys/a/b", None),
        ("/users/alice/api-key/access-log", None),
        ("/users/t/api-keys/x/api-key/access-log", None),
        ("/audit", None),
    ],
)
def test_a_path_names_its_key_route_sub_and_provider(
    path: str, matched: tuple[str, str, str | None] | None
) -> None:
    assert match_key_path(path) == matched
