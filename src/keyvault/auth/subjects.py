"""What a `sub` may be: the identity provider's subject, as a path names the user it is about.

The rule is a regular expression that validates the request and is published as the `pattern` of
the OpenAPI schema, like the api_key rule in keyvault.keys.input_rules, and with the same
`\\uXXXX` escapes that Python's `re` and ECMA-262 read alike. A refusal names the rule it broke,
never the value.
"""

from __future__ import annotations

import re
from typing import Final

SUB_MAX_LENGTH: Final = 255

# Invalid UTF-8 in a percent-encoded path decodes to U+FFFD, so `x%ff` and `x%fe` would be one
# user: the replacement character is refused along with the control characters (category Cc).
SUB_PATTERN: Final = r"^[^\u0000-\u001f\u007f-\u009f\ufffd]*$"
_SUB: Final = re.compile(SUB_PATTERN)
_CONTROL: Final = re.compile(r"[\u0000-\u001f\u007f-\u009f]")


def sub_problem(value: str) -> str | None:
    """Why `value` is not an acceptable sub, or None when it is."""
    if not 0 < len(value) <= SUB_MAX_LENGTH:
        return f"must be 1 to {SUB_MAX_LENGTH} characters"
    if _SUB.fullmatch(value):
        return None
    if _CONTROL.search(value):
        return "must not contain control characters"
    return "must be valid UTF-8 (percent-encoded) and must not contain U+FFFD"
