"""If-Match and If-None-Match on a PUT, as RFC 9110 defines them (sections 13.1.1, 13.1.2, 13.2.2).

Each header is `*` or a comma-separated list of entity tags (`"…"`, or `W/"…"` for a weak one);
several field lines of one header are one list. If-Match compares strongly (a weak tag never
matches), If-None-Match weakly. A value outside that grammar, such as a list holding `*`, is
refused with 422: a client that sent a condition must not have its write applied unconditionally,
and a 412 would send it to re-read the key and retry the same malformed header.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from keyvault.errors import InvalidRequest

# One list element and what follows it: optional whitespace, an entity tag or nothing (an empty
# element), optional whitespace, then a comma or the end.
_ELEMENT: Final = re.compile(r'[ \t]*(?:(W/)?("[\x21\x23-\x7e\x80-\xff]*")[ \t]*)?(,|\Z)')


@dataclass(frozen=True, slots=True)
class EntityTags:
    """One header's value: `*`, or entity tags (their quoted opaque tags, by strength)."""

    any: bool = False
    strong: frozenset[str] = frozenset()
    weak: frozenset[str] = frozenset()

    def strong_match(self, etag: str) -> bool:
        return self.any or etag in self.strong

    def weak_match(self, etag: str) -> bool:
        return self.any or etag in self.strong or etag in self.weak


@dataclass(frozen=True, slots=True)
class Precondition:
    """A PUT's If-Match and If-None-Match, parsed (None: the header was not sent)."""

    if_match: EntityTags | None = None
    if_none_match: EntityTags | None = None

    @property
    def unconditional(self) -> bool:
        return self.if_match is None and self.if_none_match is None

    @property
    def only_creates(self) -> bool:
        """`If-None-Match: *` alone: the write is one insert that fails if the key exists."""
        return self.if_match is None and self.if_none_match is not None and self.if_none_match.any

    def refusal(self, current_etag: str | None) -> str | None:
        """Why the write must not happen over the key whose ETag is `current_etag` (None: no key),
        or None when it may; If-Match is evaluated first (RFC 9110, section 13.2.2)."""
        if self.if_match is not None:
            if current_etag is None:
                return "This user has no API key, so If-Match cannot hold."
            if not self.if_match.strong_match(current_etag):
                return "The key has changed since the given ETag was issued."
        if self.if_none_match is not None and current_etag is not None:
            if self.if_none_match.any:
                return "This user already has an API key (If-None-Match: *)."
            if self.if_none_match.weak_match(current_etag):
                return "The key's current ETag matches If-None-Match."
        return None


def precondition_of(
    if_match: Sequence[str] | None, if_none_match: Sequence[str] | None
) -> Precondition:
    """The request's If-Match / If-None-Match field lines, parsed; InvalidRequest if malformed."""
    return Precondition(
        if_match=_entity_tags("If-Match", if_match),
        if_none_match=_entity_tags("If-None-Match", if_none_match),
    )


def _entity_tags(name: str, lines: Sequence[str] | None) -> EntityTags | None:
    if not lines:
        return None
    value = ", ".join(lines)
    if value.strip(" \t") == "*":
        return EntityTags(any=True)
    strong: set[str] = set()
    weak: set[str] = set()
    position = 0
    while True:
        element = _ELEMENT.match(value, position)
        if element is None:
            detail = (
                f"{name}: `*` must stand alone, not in a list."
                if "*" in value
                else f'{name}: must be `*` or a list of entity tags ("…" or W/"…").'
            )
            raise InvalidRequest(detail)
        weakness, tag, separator = element.groups()
        if tag is not None:
            (weak if weakness else strong).add(tag)
        if not separator:
            return EntityTags(strong=frozenset(strong), weak=frozenset(weak))
        position = element.end()
