"""Which paths a provider's proxy forwards: exactly the listed ones and those below a `prefix/*`;
a path that could mean another one to the provider (dot segments, encoded separators, odd
characters) is refused whatever the list says."""

from __future__ import annotations

import pytest

from keyvault.providers.registry import OPENAI_PROXY_PATHS, proxy_path_problem
from keyvault.proxy.paths import PathRules, requested_path

OPENAI = PathRules(OPENAI_PROXY_PATHS)


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        (b"chat/completions", "chat/completions"),
        (b"models", "models"),
        (b"audio/speech", "audio/*"),
        (b"audio/transcriptions", "audio/*"),
        (b"images/generations", "images/*"),
        (b"ch%61t/completions", "chat/completions"),  # an unreserved character, encoded
        (b"images/variations/ft:img-1", "images/*"),
        (b"images/a;b", "images/*"),  # a `;` in a segment that is not a dot segment
    ],
)
def test_listed_paths_and_those_below_a_prefix_match(raw: bytes, pattern: str) -> None:
    path = requested_path(raw)
    assert path is not None
    assert OPENAI.match(path) == pattern


@pytest.mark.parametrize(
    "raw",
    [b"files", b"chat", b"chat/completions/x", b"models/gpt-4o", b"audio", b"moderationsx"],
)
def test_paths_not_listed_do_not_match(raw: bytes) -> None:
    path = requested_path(raw)
    assert path is not None
    assert OPENAI.match(path) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"/",
        b"audio/",
        b"audio//speech",
        b"audio/./speech",
        b"audio/../files",
        b"audio/%2e%2e/files",
        b"audio/%2E./files",
        b"chat%2Fcompletions",
        b"chat%2fcompletions",
        b"audio%5cspeech",
        b"audio\\speech",
        b"audio/sp eech",
        b"audio/%20",
        b"audio/%C3%A9",
        b"audio/%ff",
        b"audio/%25",
        b"audio/speech\n",
        b"images/..;/files",  # `..` to a server that drops `;parameters`
        b"audio/%2e%2e;x/files",
        b"audio/.;/speech",
        b"audio/;x/speech",
        b"a" * 2049,
    ],
)
def test_a_path_that_could_mean_another_is_refused(raw: bytes) -> None:
    assert requested_path(raw) is None


@pytest.mark.parametrize(
    ("pattern", "admitted"),
    [
        ("chat/completions", True),
        ("v1/messages/count_tokens", True),
        ("audio/*", True),
        ("v2.1/x-y_z~", True),
        ("*", False),
        ("a/*/b", False),
        ("a/**", False),
        ("a/../b", False),
        ("./a", False),
        ("a//b", False),
        ("a/", False),
        ("a b", False),
        ("a%2Fb", False),
        ("a?b", False),
        ("", False),
        ("a" * 129, False),
    ],
)
def test_what_a_listed_path_may_be(pattern: str, admitted: bool) -> None:
    assert (proxy_path_problem(pattern) is None) is admitted
