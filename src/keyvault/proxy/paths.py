"""Which provider paths `/proxy/{provider}/{path}` forwards.

A provider lists its paths (keyvault.providers.registry): `chat/completions` allows exactly that
path, `audio/*` every path below `audio/`. A request's path is read from the request line as sent,
percent-encoded: an encoded slash or backslash, a `.` or `..` segment, an empty segment, or any
character outside the plain set below could make the provider see another path than the one
matched here, so such a path is refused outright, whatever the list says. A segment is judged
without its `;parameters` too: servers that drop them (Java servlet containers do) read `..;x` as
`..`. The path that goes
upstream is the one matched, character for character.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from typing import Final

# Letters, digits and the sub-delimiters a path segment may hold unencoded (RFC 3986), and `/`:
# model names (`ft:gpt-4o:acme::abc`) and ids fit; `%`, whitespace and non-ASCII do not.
_PLAIN_PATH: Final = re.compile(r"[A-Za-z0-9._~:@!$&'()*+,;=/-]{1,2048}")
_ENCODED_SEPARATORS: Final = (b"%2f", b"%5c")  # `/` and `\`, compared lower-cased
_DOT_SEGMENTS: Final = frozenset({"", ".", ".."})


def requested_path(raw: bytes) -> str | None:
    """The provider path `raw` names (the request line's path after `/proxy/{provider}/`), or
    None when it is refused: see the module's docstring."""
    lowered = raw.lower()
    if any(separator in lowered for separator in _ENCODED_SEPARATORS):
        return None
    try:
        path = urllib.parse.unquote_to_bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        return None
    if not _PLAIN_PATH.fullmatch(path):
        return None
    segments = path.split("/")
    if not _DOT_SEGMENTS.isdisjoint(segment.partition(";")[0] for segment in segments):
        return None
    return path


class PathRules:
    """One provider's allowed paths, matched as listed."""

    def __init__(self, patterns: Iterable[str]) -> None:
        listed = list(patterns)
        self._exact = frozenset(pattern for pattern in listed if not pattern.endswith("/*"))
        # `audio/*` as its prefix `audio/`: a path below it, never `audio/` itself.
        self._below = [(pattern[:-1], pattern) for pattern in listed if pattern.endswith("/*")]

    def match(self, path: str) -> str | None:
        """The listed pattern that allows `path` (what the audit trail records), or None."""
        if path in self._exact:
            return path
        for prefix, pattern in self._below:
            if path.startswith(prefix) and len(path) > len(prefix):
                return pattern
        return None
