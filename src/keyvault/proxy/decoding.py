"""Decompressing a provider's answer on its way back, so that the key can be redacted from it
(keyvault.proxy.forwarding asks for `Accept-Encoding: identity`, but a provider may ignore it).

gzip and deflate only. Output comes in pieces of at most DECODED_PIECE bytes, so a small chunk that
inflates to gigabytes (a "zip bomb") is never held in memory at once; it streams on like any long
answer. A gzip body of several members (RFC 1952 allows it) is decoded member after member, and a
body that ends part-way through one is an error, never a shorter answer passed on as complete.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Final

DECODED_PIECE: Final = 64 * 1024
_GZIP: Final = 16 + zlib.MAX_WBITS
WINDOW_BITS: Final = {b"gzip": _GZIP, b"x-gzip": _GZIP, b"deflate": zlib.MAX_WBITS}


class Decoder:
    """One answer's body, decompressed as its chunks arrive; zlib.error for a body that is not."""

    __slots__ = ("_wbits", "_zlib")

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._zlib = zlib.decompressobj(wbits)

    def decode(self, data: bytes) -> Iterator[bytes]:
        while data:
            piece = self._zlib.decompress(data, DECODED_PIECE)
            if piece:
                yield piece
            if self._zlib.eof:  # a member ended; what follows it starts the next
                data = self._zlib.unused_data
                if data:
                    self._zlib = zlib.decompressobj(self._wbits)
            else:
                data = self._zlib.unconsumed_tail

    def finish(self) -> bytes:
        """What is left once the body has ended; zlib.error when it ended inside a member."""
        rest = self._zlib.flush()
        if not self._zlib.eof:
            raise zlib.error("the compressed body ended part-way")
        return rest
