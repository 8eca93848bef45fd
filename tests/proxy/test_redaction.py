"""The user's key is replaced wherever an answer holds it: in a header, in a whole body, and in a
streamed body however its chunks fall, without holding back what cannot be the key."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from keyvault.proxy.redaction import REDACTED, Redactor

KEY = "sk-proj-CANARY0redaction0key0123456789"
TEXT = (
    f'{{"error": {{"message": "Incorrect API key provided: {KEY}", "again": "{KEY}"}}}}\n'.encode()
)


def _streamed(data: bytes, cuts: list[int], key: str = KEY) -> bytes:
    redactor = Redactor(key)
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return b"".join(redactor.feed(piece) for piece in pieces) + redactor.flush()


def test_every_occurrence_in_a_whole_body_or_header_is_replaced() -> None:
    redactor = Redactor(KEY)
    assert redactor.text(TEXT) == TEXT.replace(KEY.encode(), REDACTED)
    assert redactor.text(f"Bearer {KEY}".encode()) == b"Bearer " + REDACTED
    assert redactor.redactions == 3


def test_the_key_split_across_any_two_chunks_is_replaced() -> None:
    expected = TEXT.replace(KEY.encode(), REDACTED)
    for cut in range(1, len(TEXT)):
        assert _streamed(TEXT, [cut]) == expected, cut


def test_the_key_split_across_many_chunks_is_replaced() -> None:
    expected = TEXT.replace(KEY.encode(), REDACTED)
    assert _streamed(TEXT, list(range(1, len(TEXT)))) == expected  # one byte at a time
    assert _streamed(TEXT, list(range(7, len(TEXT), 7))) == expected


@pytest.mark.parametrize(
    "spelled",
    [
        json.dumps("sk-ünïcode-key-0123456789")[1:-1],
        urllib.parse.quote("sk-ünïcode-key-0123456789", safe=""),
        "sk-ünïcode-key-0123456789",
    ],
)
def test_the_key_as_json_or_a_url_would_spell_it_is_replaced(spelled: str) -> None:
    body = f"echo: {spelled}!".encode()
    assert Redactor("sk-ünïcode-key-0123456789").text(body) == b"echo: " + REDACTED + b"!"


@pytest.mark.parametrize(
    "spelled",
    [
        "sk-b64/key+part=",
        "sk-b64\\/key+part=",  # JSON with `/` escaped
        "sk-b64%2Fkey%2Bpart%3D",
        "sk-b64%2fkey%2bpart%3d",  # percent-encoding in lower-case hex
    ],
)
def test_a_key_with_url_characters_is_replaced_however_it_is_escaped(spelled: str) -> None:
    redactor = Redactor("sk-b64/key+part=")
    body = f"echo: {spelled}!".encode()
    assert redactor.text(body) == b"echo: " + REDACTED + b"!"
    assert _streamed(body, [9], "sk-b64/key+part=") == b"echo: " + REDACTED + b"!"


def test_an_event_ending_in_a_newline_is_passed_on_whole_and_at_once() -> None:
    redactor = Redactor(KEY)
    event = b'data: {"choices": [{"delta": {"content": "sk-proj"}}]}\n\n'
    assert redactor.feed(event) == event


def test_only_a_possible_start_of_the_key_is_held_back() -> None:
    redactor = Redactor(KEY)
    assert redactor.feed(b"data: sk-pr") == b"data: "
    assert redactor.feed(b"oject\n") == b"sk-project\n"  # it was not the key after all
    assert redactor.feed(b"tail sk-") == b"tail "
    assert redactor.flush() == b"sk-"


def test_a_body_without_the_key_is_unchanged_and_counts_nothing() -> None:
    redactor = Redactor(KEY)
    body = b'{"id": "chatcmpl-1", "choices": []}'
    assert redactor.text(body) is not None
    assert _streamed(body, [5, 9]) == body
    assert redactor.redactions == 0


def test_the_redactor_does_not_show_the_key() -> None:
    redactor = Redactor(KEY)
    assert KEY not in repr(redactor)
