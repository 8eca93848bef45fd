"""What the key routes accept as an `api_key` and a `label`, stated once (for a `sub`, see
auth.subjects).

The rule is a regular expression that validates the request and is published as the `pattern`
of the OpenAPI schema, so a schema-driven client or fuzzer sees exactly the contract the server
applies. The pattern uses `\\uXXXX` escapes and literal characters only, which Python's `re` and
ECMA-262 (JSON Schema's dialect, with the `u` flag) read alike. A refusal names the rule it broke,
never the value.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from keyvault.db.models import LABEL_MAX_LENGTH

API_KEY_MAX_LENGTH: Final = 1024

# Whitespace as str.isspace() has it (what strip() removes).
_WHITESPACE: Final = (
    r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000"
)
# What a key must not contain: whitespace, control and format characters (categories Cc, Cf), and
# lone surrogates (Cs: JSON's "\ud800" escape decodes to one, and it has no UTF-8 form). Astral
# characters stand as themselves: `\U0001xxxx` is Python's spelling, `\u{1xxxx}` ECMA's.
# tests/keys/test_input_rules.py derives these classes from unicodedata and compares.
_REFUSED_ABOVE_THE_SPACE: Final = (
    r"\u007f-\u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2"
    r"\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u3000\ud800-\udfff"
    r"\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f"
)
_REFUSED_IN_A_KEY: Final = r"\u0000-\u0020" + _REFUSED_ABOVE_THE_SPACE
# A label is shown to people: it may hold spaces (U+0020), and nothing else a key refuses.
_REFUSED_IN_A_LABEL: Final = r"\u0000-\u001f" + _REFUSED_ABOVE_THE_SPACE
# The key as sent: surrounding whitespace (trimmed), then 1 to API_KEY_MAX_LENGTH characters none
# of which is refused.
API_KEY_PATTERN: Final = (
    f"^[{_WHITESPACE}]*[^{_REFUSED_IN_A_KEY}]{{1,{API_KEY_MAX_LENGTH}}}[{_WHITESPACE}]*$"
)
_API_KEY: Final = re.compile(API_KEY_PATTERN)
LABEL_PATTERN: Final = f"^[^{_REFUSED_IN_A_LABEL}]{{1,{LABEL_MAX_LENGTH}}}$"
_LABEL: Final = re.compile(LABEL_PATTERN)


def api_key_problem(sent: str) -> str | None:
    """Why `sent` (before trimming) is not an acceptable API key, or None when it is."""
    if _API_KEY.fullmatch(sent):
        return None
    key = sent.strip()
    if not key:
        return "must not be empty"
    if len(key) > API_KEY_MAX_LENGTH:
        return f"must be at most {API_KEY_MAX_LENGTH} characters"
    if any(char.isspace() for char in key):
        return "must not contain whitespace"
    if any(unicodedata.category(char) == "Cs" for char in key):
        return "must not contain unpaired surrogates"
    return "must not contain control characters"


def label_problem(label: str) -> str | None:
    """Why `label` is not an acceptable label, or None when it is."""
    if _LABEL.fullmatch(label):
        return None
    if not 0 < len(label) <= LABEL_MAX_LENGTH:
        return f"must be 1 to {LABEL_MAX_LENGTH} characters"
    if any(char.isspace() for char in label):
        return "must not contain whitespace other than spaces"
    if any(unicodedata.category(char) == "Cs" for char in label):
        return "must not contain unpaired surrogates"
    return "must not contain control characters"
