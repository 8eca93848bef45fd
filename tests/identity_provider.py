"""A real local HTTP server playing the identity provider's JWKS endpoint, which a test can make
roll its keys over, fail, or hang (each hang bounded, and released when the server stops)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jwt.algorithms import RSAAlgorithm

HANG_LIMIT_SECONDS = 10.0


def jwks_of(keys: dict[str, Any]) -> dict[str, Any]:
    """The key set publishing each RSA private key's public half under its kid."""
    return {
        "keys": [
            json.loads(RSAAlgorithm.to_jwk(key.public_key())) | {"kid": kid, "use": "sig"}
            for kid, key in keys.items()
        ]
    }


class IdentityProvider:
    def __init__(self, key_set: dict[str, Any]) -> None:
        self.key_set = key_set
        self.status = 200
        self.requests = 0
        self._hanging = threading.Event()
        self._release = threading.Event()
        self.url = ""

    def hang(self) -> None:
        """Answer nothing until `release` (or HANG_LIMIT_SECONDS)."""
        self._release.clear()
        self._hanging.set()

    def release(self) -> None:
        self._hanging.clear()
        self._release.set()

    def _respond(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests += 1
        if self._hanging.is_set():
            self._release.wait(HANG_LIMIT_SECONDS)
        body = json.dumps(self.key_set).encode()
        try:
            handler.send_response(self.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:  # a client that gave up on a hanging answer has closed the connection
            pass


@contextmanager
def running_provider(
    key_set: dict[str, Any], path: str = "/jwks.json"
) -> Iterator[IdentityProvider]:
    provider = IdentityProvider(key_set)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            provider._respond(self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    provider.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    try:
        yield provider
    finally:
        provider.release()
        server.shutdown()
        server.server_close()
