"""The provider registry: the built-in providers, the names a provider may have, and
KEYVAULT_PROVIDERS_FILE, whose every mistake refuses start-up in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyvault.config import ConfigurationError, Settings
from keyvault.providers.providers_file import load_providers
from keyvault.providers.registry import (
    ANTHROPIC_PROXY_PATHS,
    OPENAI_PROXY_PATHS,
    Provider,
    provider_name_problem,
)
from keyvault.web.app import create_app
from tests.cli.test_cli import assert_one_line_failure, keyvault, service_env
from tests.conftest import make_settings

GOOD = """
[providers.mistral]
base_url = "https://api.mistral.ai/v1/"
validation_path = "/models"

[providers.acme]
base_url = "http://llm.acme.internal:8080"
validation_path = "v2/whoami"
key_header = "X-Acme-Key"
headers = { "Acme-Version" = "2024-06-01" }
"""


def _settings(tmp_path: Path, text: str | None = None, **overrides: object) -> Settings:
    if text is not None:
        path = tmp_path / "providers.toml"
        path.write_text(text)
        overrides["providers_file"] = path
    return make_settings("sqlite+aiosqlite:///unused.db", **overrides)


def test_the_built_in_providers_send_the_key_their_own_way(tmp_path: Path) -> None:
    providers = load_providers(_settings(tmp_path))
    openai, anthropic = providers.get("openai"), providers.get("anthropic")
    assert providers.names == ["openai", "anthropic"]
    assert openai == Provider(
        "openai", "https://api.openai.com/v1", "models", proxy_paths=OPENAI_PROXY_PATHS
    )
    assert openai.url(openai.validation_path) == "https://api.openai.com/v1/models"
    assert openai.key_headers("sk-1") == [("authorization", "Bearer sk-1")]
    assert anthropic is not None
    assert anthropic.url(anthropic.validation_path) == "https://api.anthropic.com/v1/models"
    assert anthropic.key_headers("sk-2") == [
        ("anthropic-version", "2023-06-01"),
        ("x-api-key", "sk-2"),
    ]


def test_base_url_settings_move_the_built_in_providers(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        openai_base_url="http://127.0.0.1:9000/openai/v1/",
        anthropic_base_url="https://anthropic.proxy.internal",
    )
    providers = load_providers(settings)
    assert [p.base_url for p in providers] == [
        "http://127.0.0.1:9000/openai/v1",
        "https://anthropic.proxy.internal",
    ]


@pytest.mark.parametrize(
    "url",
    ["ftp://api.example.com", "api.example.com", "https://user:pw@x.example", "https://x/?a=1"],
)
def test_a_base_url_setting_that_cannot_be_one_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^KEYVAULT_OPENAI_BASE_URL must"):
        load_providers(_settings(tmp_path, openai_base_url=url))


def test_a_providers_file_adds_providers(tmp_path: Path) -> None:
    providers = load_providers(_settings(tmp_path, GOOD))
    assert providers.names == ["openai", "anthropic", "mistral", "acme"]
    mistral, acme = providers.get("mistral"), providers.get("acme")
    assert mistral == Provider("mistral", "https://api.mistral.ai/v1", "models")
    assert acme is not None
    assert acme.url(acme.validation_path) == "http://llm.acme.internal:8080/v2/whoami"
    assert acme.key_headers("k") == [("acme-version", "2024-06-01"), ("x-acme-key", "k")]


def test_the_built_in_providers_proxy_their_listed_paths(tmp_path: Path) -> None:
    providers = load_providers(_settings(tmp_path))
    assert [p.proxy_paths for p in providers] == [OPENAI_PROXY_PATHS, ANTHROPIC_PROXY_PATHS]
    assert "chat/completions" in OPENAI_PROXY_PATHS
    assert "audio/*" in OPENAI_PROXY_PATHS
    assert ANTHROPIC_PROXY_PATHS == ("v1/messages", "v1/messages/count_tokens", "v1/models")


def test_a_providers_file_lists_what_the_proxy_forwards(tmp_path: Path) -> None:
    text = (
        GOOD
        + 'proxy_paths = ["/v2/chat", "v2/files/*", "v2/chat"]\n'
        + '[providers.openai]\nproxy_paths = ["embeddings"]\n'
        + "[providers.anthropic]\nproxy_paths = []\n"
    )
    providers = load_providers(_settings(tmp_path, text))
    assert providers.names == ["openai", "anthropic", "mistral", "acme"]
    by_name = {p.name: p for p in providers}
    assert by_name["acme"].proxy_paths == ("v2/chat", "v2/files/*")
    assert by_name["mistral"].proxy_paths == ()  # none unless listed
    assert by_name["openai"].proxy_paths == ("embeddings",)
    assert by_name["openai"].base_url == "https://api.openai.com/v1"
    assert by_name["anthropic"].proxy_paths == ()


_ENTRY = '[providers.m]\nbase_url = "https://m.example"\nvalidation_path = "m"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_ENTRY + 'proxy_paths = "chat"', "proxy_paths must be a list of at most 64 paths"),
        (_ENTRY + f"proxy_paths = {['p'] * 65}", "proxy_paths must be a list of at most 64"),
        (_ENTRY + "proxy_paths = [1]", "proxy_paths: 1 must be a non-empty string"),
        (_ENTRY + 'proxy_paths = [""]', "proxy_paths: '' must be a non-empty string"),
        (_ENTRY + 'proxy_paths = ["a/../b"]', "must be path segments"),
        (_ENTRY + 'proxy_paths = ["a/./b"]', "must be path segments"),
        (_ENTRY + 'proxy_paths = ["a//b"]', "must be path segments"),
        (_ENTRY + 'proxy_paths = ["a/*/b"]', "must be path segments"),
        (_ENTRY + 'proxy_paths = ["*"]', "must be path segments"),
        (_ENTRY + 'proxy_paths = ["a?b=1"]', "must be path segments"),
        (_ENTRY + 'proxy_paths = ["a%2Fb"]', "must be path segments"),
        (_ENTRY + f'proxy_paths = ["{"a" * 129}"]', "must be 1 to 128 characters"),
        ('[providers.openai]\nproxy_paths = ["x"]\nkey_header = "y"', "only its proxy_paths"),
    ],
)
def test_bad_proxy_paths_are_refused_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_providers(_settings(tmp_path, text))
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[providers.x", "is not valid TOML"),
        ("[other]\na = 1", "unknown top-level entry 'other'"),
        ("providers = 3", "`providers` must be a table"),
        (
            '[providers.Mistral]\nbase_url = "https://m.example"\nvalidation_path = "m"',
            "lower-case",
        ),
        ('[providers.status]\nbase_url = "https://m.example"\nvalidation_path = "m"', "reserved"),
        (
            '[providers.openai]\nbase_url = "https://m.example"\nvalidation_path = "m"',
            "KEYVAULT_OPENAI_BASE_URL",
        ),
        ('[providers.m]\nvalidation_path = "m"', "providers.m.base_url must be a non-empty string"),
        (
            '[providers.m]\nbase_url = "gopher://m"\nvalidation_path = "m"',
            "base_url must be an http",
        ),
        ('[providers.m]\nbase_url = "https://m.example"', "validation_path must be a non-empty"),
        (
            '[providers.m]\nbase_url = "https://m.example"\nvalidation_path = "a/../b"',
            "no query, no ..",
        ),
        (
            '[providers.m]\nbase_url = "https://m.example"\nvalidation_path = "m?x=1"',
            "no query, no ..",
        ),
        (
            '[providers.m]\nbase_url = "https://m.example"\nvalidation_path = "m"\nkey = "x"',
            "unknown field 'key'",
        ),
        (
            '[providers.m]\nbase_url = "https://m.example"\nvalidation_path = "m"\nkey_header = "x y"',
            "key_header must be an HTTP header name",
        ),
        (
            '[providers.m]\nbase_url = "https://m.example"\nvalidation_path = "m"\nkey_header = "Host"',
            "key_header cannot be host",
        ),
        (
            '[providers.m]\nbase_url = "https://m.example"\nvalidation_path = "m"\nheaders = { "Authorization" = "x" }',
            "headers cannot set authorization",
        ),
        (
            '[providers.m]\nbase_url = "https://m.example"\nvalidation_path = "m"\nheaders = { "v" = "a\\nb" }',
            "headers.v must be a string of printable ASCII",
        ),
        (
            '[providers.m]\nbase_url = "https://m.example"\nvalidation_path = "m"\nheaders = 1',
            "headers must be a table",
        ),
    ],
)
def test_a_bad_providers_file_is_refused_in_one_line_naming_the_entry(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_providers(_settings(tmp_path, text))
    message = str(refused.value)
    assert message.startswith(f"KEYVAULT_PROVIDERS_FILE {tmp_path / 'providers.toml'}")
    assert expected in message
    assert "\n" not in message


def test_a_missing_providers_file_is_refused(tmp_path: Path) -> None:
    settings = make_settings("sqlite+aiosqlite:///unused.db", providers_file=tmp_path / "nope.toml")
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_providers(settings)


def test_the_app_is_not_built_over_a_bad_providers_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        create_app(_settings(tmp_path, "[providers.x"))


def test_serve_with_a_bad_providers_file_refuses_in_one_line(
    tmp_path: Path, empty_database_url: str
) -> None:
    (tmp_path / "providers.toml").write_text('[providers.m]\nbase_url = "https://m.example"\n')
    env = service_env(empty_database_url) | {
        "KEYVAULT_PROVIDERS_FILE": str(tmp_path / "providers.toml")
    }
    result = keyvault("serve", "--port", "1", cwd=tmp_path, env=env)
    assert_one_line_failure(result, "providers.m.validation_path must be a non-empty string")


@pytest.mark.parametrize(
    ("name", "admitted"),
    [
        ("openai", True),
        ("my_llm-2", True),
        ("x" * 32, True),
        ("x" * 33, False),
        ("", False),
        ("2fast", False),
        ("Upper", False),
        ("a.b", False),
        ("api-key", False),
        ("api-keys", False),
        ("access-log", False),
    ],
)
def test_provider_names_are_plain_path_segments(name: str, admitted: bool) -> None:
    assert (provider_name_problem(name) is None) is admitted
