"""The headers of a proxied call, each way.

To the provider go the caller's headers less those that are the connection's (hop-by-hop, and any
the `Connection` header names), keyvault's own credentials (`Authorization`, the provider's key
header, and any other header that carries the caller's keyvault token), `Cookie`, every
`X-Keyvault-*` header, `Host` (the HTTP client sets the provider's), `Expect` and
`Accept-Encoding`; then the provider's fixed headers where the caller sent none of
its own, `Accept-Encoding: identity` (a body must arrive readable, so that the key can be
redacted from it) and the user's key, the provider's way.

Back to the caller go the provider's headers less the hop-by-hop ones, `Set-Cookie` (a cookie
would be the provider's to one user, handed to whichever service called), `Date` (the server
sets its own) and any `X-Keyvault-*` (only keyvault speaks for keyvault), each value redacted; `Content-Length` only when the body is passed on unchanged in
length, `Content-Encoding` only when the body is passed on as it came.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from keyvault.providers.registry import BEARER_HEADER, Provider
from keyvault.proxy.redaction import Redactor

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
KEYVAULT_PREFIX: Final = b"x-keyvault-"
_NOT_FORWARDED: Final = HOP_BY_HOP | {
    b"host",
    BEARER_HEADER.encode(),
    b"cookie",
    b"expect",
    b"accept-encoding",
}
_NOT_RETURNED: Final = HOP_BY_HOP | {b"set-cookie", b"date"}
IDENTITY: Final = (b"accept-encoding", b"identity")


class ProviderHeaders:
    """One provider's way with headers, worked out once."""

    __slots__ = ("_bearer", "_fixed", "_key_header", "_not_forwarded")

    def __init__(self, provider: Provider) -> None:
        self._key_header = provider.key_header.encode()
        self._bearer = provider.bearer
        self._not_forwarded = _NOT_FORWARDED | {self._key_header}
        self._fixed = [(name.encode(), value.encode()) for name, value in provider.headers]

    @property
    def key_header(self) -> bytes:
        """The header the provider takes its key in, lower-case (`authorization` for Bearer)."""
        return self._key_header

    def upstream(
        self, headers: Sequence[tuple[bytes, bytes]], api_key: str, token: bytes = b""
    ) -> Headers:
        """What goes to the provider, from the caller's headers (ASGI's: names lower-case) and
        the keyvault `token` they carry. It holds the key: never log it."""
        dropped = self._not_forwarded | _named_by_connection(headers)
        forwarded = [
            (name, value)
            for name, value in headers
            if name not in dropped
            and not name.startswith(KEYVAULT_PREFIX)
            and not (token and token in value)
        ]
        sent = {name for name, _ in forwarded}
        forwarded += [(name, value) for name, value in self._fixed if name not in sent]
        key = f"Bearer {api_key}" if self._bearer else api_key
        forwarded += [IDENTITY, (self._key_header, key.encode())]
        return forwarded


def downstream(
    headers: Sequence[tuple[bytes, bytes]], redactor: Redactor, *, same_length: bool, decoded: bool
) -> Headers:
    """What goes back to the caller, from the provider's headers (any case). `same_length`: the
    body goes on byte for byte, so its Content-Length holds; `decoded`: the body was decompressed
    on the way, so its Content-Encoding no longer does."""
    lowered = [
        (name.lower(), value)
        for name, value in headers
        if not name.lower().startswith(KEYVAULT_PREFIX)
    ]
    dropped = _NOT_RETURNED | _named_by_connection(lowered)
    if not same_length:
        dropped |= {b"content-length"}
    if decoded:
        dropped |= {b"content-encoding"}
    return [(name, redactor.text(value)) for name, value in lowered if name not in dropped]


def _named_by_connection(headers: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes]:
    named = [value for name, value in headers if name == b"connection"]
    if not named:
        return frozenset()
    return frozenset(
        token.strip().lower() for value in named for token in value.split(b",") if token.strip()
    )
