"""The sub and api_key rules: the patterns published in the OpenAPI schema are the ones the server
applies, derived from the Unicode data of the running Python, and refusals name the rule."""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Callable

import httpx
import pytest

from keyvault.auth.subjects import SUB_PATTERN, sub_problem
from keyvault.keys.input_rules import API_KEY_MAX_LENGTH, API_KEY_PATTERN, api_key_problem
from tests.conftest import TokenFactory, bearer

KEY_SAMPLES = [
    "sk-proj-abcdefghijkl1234",
    "  sk-padded\t\n",
    "k" * API_KEY_MAX_LENGTH,
    "k" * (API_KEY_MAX_LENGTH + 1),
    "",
    " \u3000 ",
    "sk inner",
    "sk-\x00",
    "sk-\x7f",
    "sk-\u0085",
    "sk-\u00ad",
    "sk-\u200b",
    "sk-\ufeff",
    "\ufeffsk",
    "sk-\ud800",
    "sk-\udfff-low",
    "sk-\U000e0001",
    "sk-\U0001f511-emoji",
    "sk-ünïcødé",
]
SUB_SAMPLES = ["google-oauth2|1234", "a b", "ünï", "x" * 255, "a\nb", "a\rb", "\x7f", "x\ufffd"]


def _class_of(wanted: Callable[[str], bool]) -> str:
    """The character-class body input_rules spells by hand, derived from unicodedata."""
    parts, first = [], None
    for code in range(sys.maxunicode + 2):
        if code <= sys.maxunicode and wanted(chr(code)):
            first = code if first is None else first
        elif first is not None:
            ends = [f"\\u{c:04x}" if c <= 0xFFFF else chr(c) for c in (first, code - 1)]
            parts.append(ends[0] if first == code - 1 else "-".join(ends))
            first = None
    return "".join(parts)


def test_the_api_key_pattern_is_derived_from_the_unicode_data() -> None:
    whitespace = _class_of(str.isspace)
    refused = _class_of(
        lambda char: char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs")
    )
    assert (
        f"^[{whitespace}]*[^{refused}]{{1,{API_KEY_MAX_LENGTH}}}[{whitespace}]*$"
    ) == API_KEY_PATTERN


@pytest.mark.parametrize("sent", KEY_SAMPLES)
def test_the_api_key_pattern_admits_exactly_what_the_rule_admits(sent: str) -> None:
    key = sent.strip()
    admitted = (
        0 < len(key) <= API_KEY_MAX_LENGTH
        and not any(char.isspace() for char in key)
        and not any(unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in key)
    )
    assert (api_key_problem(sent) is None) is admitted
    assert (re.fullmatch(API_KEY_PATTERN, sent) is not None) is admitted


@pytest.mark.parametrize("sub", SUB_SAMPLES)
def test_the_sub_pattern_admits_exactly_what_the_rule_admits(sub: str) -> None:
    admitted = not any(unicodedata.category(char) == "Cc" or char == "\ufffd" for char in sub)
    assert (sub_problem(sub) is None) is admitted
    assert (re.fullmatch(SUB_PATTERN, sub) is not None) is admitted


async def test_the_schema_states_the_rules_the_server_applies(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, methods in spec["paths"].items():
        if not path.startswith("/users/{sub}/"):
            continue
        for operation in methods.values():
            (sub,) = [p for p in operation["parameters"] if p["name"] == "sub"]
            assert (
                sub["schema"] | {"minLength": 1, "maxLength": 255, "pattern": SUB_PATTERN}
                == (sub["schema"])
            ), path
    api_key = spec["components"]["schemas"]["ApiKeyWrite"]["properties"]["api_key"]
    assert api_key["pattern"] == API_KEY_PATTERN
    # What the server answers for each sample is what the published pattern says. json.dumps
    # escapes to ASCII: "\ud800" is how a lone surrogate can be sent at all.
    headers = {**bearer(token("alice", "api-key:write")), "Content-Type": "application/json"}
    for sent in KEY_SAMPLES:
        body = json.dumps({"api_key": sent}).encode()
        response = await client.put("/users/alice/api-key", content=body, headers=headers)
        assert response.status_code in (200, 201, 422), repr(sent)
        assert response.is_success is (re.fullmatch(api_key["pattern"], sent) is not None)
