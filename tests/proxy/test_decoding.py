"""A compressed answer is decoded whole, member after member, in bounded pieces; one cut short is
an error, never a shorter answer."""

from __future__ import annotations

import gzip
import zlib

import pytest

from keyvault.proxy.decoding import DECODED_PIECE, WINDOW_BITS, Decoder


def _decoded(encoding: bytes, body: bytes, chunk: int = 1000) -> list[bytes]:
    decoder = Decoder(WINDOW_BITS[encoding])
    pieces = [p for i in range(0, len(body), chunk) for p in decoder.decode(body[i : i + chunk])]
    return [*pieces, decoder.finish()]


@pytest.mark.parametrize("encoding", [b"gzip", b"x-gzip"])
def test_a_gzip_answer_of_several_members_is_decoded_whole(encoding: bytes) -> None:
    body = gzip.compress(b"first member, ") + gzip.compress(b"second member")
    for chunk in (1, 7, len(body)):
        assert b"".join(_decoded(encoding, body, chunk)) == b"first member, second member"


def test_a_deflate_answer_is_decoded() -> None:
    assert b"".join(_decoded(b"deflate", zlib.compress(b"plain text" * 100))) == b"plain text" * 100


def test_a_small_chunk_that_inflates_hugely_comes_out_in_bounded_pieces() -> None:
    bomb = gzip.compress(bytes(50 * 1024 * 1024))  # 50 MiB of zeros in about 50 KiB
    assert len(bomb) < 100 * 1024
    total = 0
    decoder = Decoder(WINDOW_BITS[b"gzip"])
    for piece in decoder.decode(bomb):
        assert len(piece) <= DECODED_PIECE
        total += len(piece)
    total += len(decoder.finish())
    assert total == 50 * 1024 * 1024


def test_an_answer_cut_inside_a_member_is_an_error() -> None:
    body = gzip.compress(b"a body that will not arrive in full" * 10)
    decoder = Decoder(WINDOW_BITS[b"gzip"])
    list(decoder.decode(body[: len(body) // 2]))
    with pytest.raises(zlib.error):
        decoder.finish()


def test_bytes_that_are_not_gzip_are_an_error() -> None:
    with pytest.raises(zlib.error):
        list(Decoder(WINDOW_BITS[b"gzip"]).decode(b"not compressed at all"))
