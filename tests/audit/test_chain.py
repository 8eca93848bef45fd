from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

from keyvault.audit.events import (
    GENESIS_LINK,
    AuditEvent,
    ChainedEvent,
    ChainHead,
    audit_key,
    canonical,
    head_mac,
    link_events,
    outcome_for_status,
)
from keyvault.audit.verification import verify_chain
from keyvault.crypto.records import RootKey

ROOT = RootKey.derive("audit-test-master-key-0123456789abcdef", b"\x01" * 16, 1000)
OTHER_ROOT = RootKey.derive("another-master-key-0123456789abcdefgh", b"\x01" * 16, 1000)


def _events(count: int) -> list[AuditEvent]:
    return [
        AuditEvent.create(
            action="get",
            outcome="ok",
            target=f"user-{number}",
            actor="service",
            key_version=number,
            occurred_at=datetime(2026, 11, 28, 12, 0, number, tzinfo=UTC),
        )
        for number in range(count)
    ]


def _chain(count: int, root: RootKey = ROOT) -> tuple[list[ChainedEvent], ChainHead]:
    key = audit_key(root)
    chained = link_events(root, key, GENESIS_LINK, 1, _events(count))
    tail = chained[-1]
    return chained, ChainHead(tail.seq, tail.link, root.key_id, head_mac(key, tail.seq, tail.link))


def _keys(*roots: RootKey) -> dict[str, RootKey]:
    return {root.key_id: root for root in roots}


def test_an_untouched_chain_verifies() -> None:
    chained, head = _chain(5)
    result = verify_chain(chained, head, _keys(ROOT).get)
    assert result.intact
    assert result.events_checked == 5


def test_an_empty_chain_with_the_genesis_head_verifies() -> None:
    result = verify_chain([], ChainHead(0, GENESIS_LINK, None, None), _keys(ROOT).get)
    assert result.intact


def test_an_edited_field_is_reported_at_its_event() -> None:
    chained, head = _chain(5)
    edited = dataclasses.replace(chained[2].event, actor="someone-else")
    chained[2] = dataclasses.replace(chained[2], event=edited)
    result = verify_chain(chained, head, _keys(ROOT).get)
    assert not result.intact
    assert result.first_bad_seq == 3


def test_a_removed_event_is_reported_by_its_sequence_number() -> None:
    chained, head = _chain(5)
    del chained[1]
    result = verify_chain(chained, head, _keys(ROOT).get)
    assert result.first_bad_seq == 2
    assert "removed" in (result.problem or "")


def test_an_inserted_event_with_a_guessed_link_is_reported() -> None:
    chained, _ = _chain(5)
    forged_event = dataclasses.replace(chained[-1].event, target="victim")
    chained.append(ChainedEvent(6, ROOT.key_id, bytes(32), forged_event))
    tail = chained[-1]
    head = ChainHead(6, tail.link, ROOT.key_id, bytes(32))
    result = verify_chain(chained, head, _keys(ROOT).get)
    assert result.first_bad_seq == 6


def test_events_renumbered_to_hide_a_removal_are_reported() -> None:
    chained, head = _chain(4)
    del chained[1]
    chained = [dataclasses.replace(item, seq=number) for number, item in enumerate(chained, 1)]
    result = verify_chain(chained, dataclasses.replace(head, seq=3), _keys(ROOT).get)
    assert result.first_bad_seq == 2


def test_a_cut_tail_is_reported_against_the_head() -> None:
    chained, head = _chain(5)
    result = verify_chain(chained[:3], head, _keys(ROOT).get)
    assert result.first_bad_seq == 4
    assert "removed from the end" in (result.problem or "")


def test_a_head_rewound_to_an_earlier_event_is_reported() -> None:
    chained, head = _chain(5)
    rewound = ChainHead(3, chained[2].link, ROOT.key_id, head.mac)
    result = verify_chain(chained[:3], rewound, _keys(ROOT).get)
    assert not result.intact
    assert "rewritten" in (result.problem or "")


def test_a_chain_linked_across_a_master_key_rotation_verifies_with_both_keys() -> None:
    old, _ = _chain(2, ROOT)
    new_key = audit_key(OTHER_ROOT)
    later = link_events(OTHER_ROOT, new_key, old[-1].link, 3, _events(2))
    tail = later[-1]
    head = ChainHead(tail.seq, tail.link, OTHER_ROOT.key_id, head_mac(new_key, tail.seq, tail.link))
    assert verify_chain([*old, *later], head, _keys(ROOT, OTHER_ROOT).get).intact


def test_an_event_under_a_root_key_not_held_cannot_pass() -> None:
    chained, head = _chain(3)
    result = verify_chain(chained, head, _keys(OTHER_ROOT).get)
    assert result.first_bad_seq == 1
    assert "which this configuration does not hold" in (result.problem or "")


def test_control_characters_and_long_values_are_cleaned_for_storage() -> None:
    event = AuditEvent.create(action="get", outcome="ok", target="a\x00b", user_agent="x" * 1000)
    assert event.target == "a?b"
    assert event.user_agent is not None
    assert len(event.user_agent) == 256


def test_statuses_map_to_outcomes() -> None:
    assert [outcome_for_status(status) for status in (200, 401, 403, 404, 412, 429, 500)] == [
        "ok",
        "denied_401",
        "denied_403",
        "not_found",
        "precondition_failed",
        "rate_limited",
        "error",
    ]


def test_the_provider_and_the_validation_are_chained_too() -> None:
    key = audit_key(ROOT)
    event = AuditEvent.create(
        action="put", outcome="ok", target="u", provider="anthropic", validation="passed"
    )
    chained = link_events(ROOT, key, GENESIS_LINK, 1, [event])
    head = ChainHead(1, chained[0].link, ROOT.key_id, head_mac(key, 1, chained[0].link))
    assert verify_chain(chained, head, _keys(ROOT).get).intact
    for edit in ({"provider": "openai"}, {"validation": "rejected"}, {"provider": None}):
        edited = [dataclasses.replace(chained[0], event=dataclasses.replace(event, **edit))]
        assert verify_chain(edited, head, _keys(ROOT).get).first_bad_seq == 1, edit


def test_an_event_without_provider_or_validation_hashes_as_before_they_existed() -> None:
    event = _events(1)[0]
    fields = json.loads(canonical(7, ROOT.key_id, event))
    assert "provider" not in fields
    assert "validation" not in fields
    assert set(fields) == {
        "occurred_at",
        "action",
        "outcome",
        "target",
        "actor",
        "client_id",
        "key_version",
        "request_id",
        "client_address",
        "user_agent",
        "seq",
        "key_id",
    }
