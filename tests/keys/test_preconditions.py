"""If-Match / If-None-Match parsing and evaluation, as RFC 9110 defines them."""

from __future__ import annotations

import pytest

from keyvault.errors import InvalidRequest
from keyvault.keys.preconditions import EntityTags, precondition_of

CURRENT = '"2.1700000000000000"'


@pytest.mark.parametrize(
    ("lines", "parsed"),
    [
        (["*"], EntityTags(any=True)),
        ([" * "], EntityTags(any=True)),
        (['"a"'], EntityTags(strong=frozenset({'"a"'}))),
        (['"a", W/"b"'], EntityTags(strong=frozenset({'"a"'}), weak=frozenset({'"b"'}))),
        (['"a,b"'], EntityTags(strong=frozenset({'"a,b"'}))),
        (['"a", , "b",'], EntityTags(strong=frozenset({'"a"', '"b"'}))),
        (['"a"', 'W/"b"'], EntityTags(strong=frozenset({'"a"'}), weak=frozenset({'"b"'}))),
        ([""], EntityTags()),
    ],
)
def test_entity_tag_lists_are_parsed_by_the_grammar(lines: list[str], parsed: EntityTags) -> None:
    assert precondition_of(lines, None).if_match == parsed
    assert precondition_of(None, lines).if_none_match == parsed


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (['*, "x"'], "must stand alone"),
        (['"x", *'], "must stand alone"),
        (["*", '"x"'], "must stand alone"),
        (["abc"], "list of entity tags"),
        (['"a" "b"'], "list of entity tags"),
        (['W/ "a"'], "list of entity tags"),
        (['"a'], "list of entity tags"),
        (['w/"a"'], "list of entity tags"),
    ],
)
def test_a_malformed_header_is_invalid_not_ignored(lines: list[str], reason: str) -> None:
    for if_match, if_none_match in ((lines, None), (None, lines)):
        with pytest.raises(InvalidRequest) as refused:
            precondition_of(if_match, if_none_match)
        assert reason in refused.value.detail


@pytest.mark.parametrize(
    ("if_match", "if_none_match", "current", "holds"),
    [
        ([CURRENT], None, CURRENT, True),
        ([f'"1.0", {CURRENT}'], None, CURRENT, True),
        ([f"W/{CURRENT}"], None, CURRENT, False),  # If-Match compares strongly
        (["*"], None, CURRENT, True),
        (["*"], None, None, False),
        ([CURRENT], None, None, False),
        (None, [CURRENT], CURRENT, False),
        (None, [f"W/{CURRENT}"], CURRENT, False),  # If-None-Match compares weakly
        (None, [f'"1.0", {CURRENT}'], CURRENT, False),
        (None, ['"1.0"'], CURRENT, True),
        (None, [CURRENT], None, True),
        (None, ["*"], CURRENT, False),
        (None, ["*"], None, True),
        ([CURRENT], ['"1.0"'], CURRENT, True),
        ([CURRENT], [CURRENT], CURRENT, False),
        (['"1.0"'], ["*"], None, False),  # If-Match first
    ],
)
def test_preconditions_hold_as_rfc_9110_evaluates_them(
    if_match: list[str] | None, if_none_match: list[str] | None, current: str | None, holds: bool
) -> None:
    refusal = precondition_of(if_match, if_none_match).refusal(current)
    assert (refusal is None) is holds
