"""Keeping the user's key out of what a provider answers: providers' 401 bodies echo the key they
were sent, and a header could too.

Every occurrence of the key, as it is and in the forms a JSON string or a URL would spell it, is
replaced by REDACTED, in header values and in the body. A streamed body is redacted chunk by
chunk without losing an occurrence split across two chunks: the end of a chunk that could be the
start of the key is held back until the next chunk shows whether it is. Keys hold no whitespace,
so a chunk ending in a newline (every server-sent event does) holds nothing back and no event is
delayed.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Final

REDACTED: Final = b"[redacted by keyvault]"


class Redactor:
    """The key's occurrences in one answer, replaced; `redactions` counts them (never the key)."""

    __slots__ = (
        "_first_bytes",
        "_held",
        "_key_bytes",
        "_longest",
        "_needles",
        "_pattern",
        "redactions",
    )

    def __init__(self, key: str) -> None:
        as_json = json.dumps(key)[1:-1]  # as a JSON string spells it (\uXXXX escapes)
        as_url = urllib.parse.quote(key, safe="")
        forms = {
            key.encode(),
            as_json.encode(),
            as_json.replace("/", "\\/").encode(),  # JSON encoders that escape `/` (PHP's)
            as_url.encode(),
            _lower_hex(as_url).encode(),  # percent-encoding in lower-case hex
        }
        self._needles = tuple(sorted(forms, key=len, reverse=True))  # the longest form first
        # One form (most keys are plain ASCII) is found with bytes.find; several, by one pattern.
        self._pattern = (
            re.compile(b"|".join(re.escape(needle) for needle in self._needles))
            if len(self._needles) > 1
            else None
        )
        self._longest = len(self._needles[0])
        self._first_bytes = frozenset(needle[:1] for needle in self._needles)
        self._key_bytes = frozenset(b"".join(self._needles))  # the byte values any form holds
        self._held = b""
        self.redactions = 0

    def text(self, value: bytes) -> bytes:
        """`value` (a header value, a whole body) with every occurrence replaced."""
        if not any(needle in value for needle in self._needles):
            return value
        if self._pattern is None:
            self.redactions += value.count(self._needles[0])
            return value.replace(self._needles[0], REDACTED)
        redacted, count = self._pattern.subn(REDACTED, value)
        self.redactions += count
        return redacted

    def feed(self, chunk: bytes) -> bytes:
        """The next chunk of a streamed body, redacted; a possible start of the key at its end is
        held back for the next chunk (or `flush`)."""
        data = self._held + chunk if self._held else chunk
        parts: list[bytes] = []
        position = 0
        for start, end in self._occurrences(data):
            parts.append(data[position:start])
            parts.append(REDACTED)
            position = end
            self.redactions += 1
        held_from = self._partial_start(data, position)
        self._held = data[held_from:]
        if not parts:
            return data[:held_from] if held_from < len(data) else data
        parts.append(data[position:held_from])
        return b"".join(parts)

    def flush(self) -> bytes:
        """What was held back, at the end of the body: it never became the key."""
        held, self._held = self._held, b""
        return held

    def _occurrences(self, data: bytes) -> list[tuple[int, int]]:
        """Where the key's forms are in `data`, left to right, none overlapping."""
        if not any(needle in data for needle in self._needles):
            return []
        if self._pattern is not None:
            return [match.span() for match in self._pattern.finditer(data)]
        needle, found = self._needles[0], []
        at = data.find(needle)
        while at != -1:
            found.append((at, at + len(needle)))
            at = data.find(needle, at + len(needle))
        return found

    def _partial_start(self, data: bytes, start: int) -> int:
        """Where the longest tail of `data[start:]` that begins some form of the key starts
        (`len(data)` when none does)."""
        end = len(data)
        if start == end or data[-1] not in self._key_bytes:  # a newline, a space, a brace, …
            return end
        lowest = max(start, end - self._longest + 1)
        best = end
        for first in self._first_bytes:
            at = data.find(first, lowest)
            while at != -1 and at < best:
                tail = data[at:]
                if any(needle.startswith(tail) for needle in self._needles):
                    best = at
                    break
                at = data.find(first, at + 1)
        return best


def _lower_hex(encoded: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda escape: escape.group().lower(), encoded)
