"""A request's JSON body, read as a PUT of a key reads it (web.key_bodies).

JSON between systems is UTF-8 (RFC 8259, section 8.1): a body in any other encoding is refused,
not guessed at. A body that cannot be read becomes an `UnreadableBody`, which the body's model
refuses when it is validated, after authentication like every other invalid body, so the refusal
is a 422 audited with the caller's identity.
"""

from __future__ import annotations

import json
from typing import Any

from keyvault.keys.schemas import UnreadableBody


def read_json(body: bytes) -> Any:
    """The body's JSON value, or an UnreadableBody."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return UnreadableBody("body is not valid UTF-8")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        return UnreadableBody("body is not valid JSON")
