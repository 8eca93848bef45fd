"""A provider on 127.0.0.1 over real HTTP, for the validation tests: it answers by the key it is
sent, the way the real ones do (their 401 bodies echo the key), and records what it received.

    a key holding "rejected"  → 401, the key echoed in the body     "forbidden" → 403
    "broken"                  → 500, the key echoed                 "teapot"    → 418
    "moved"                   → 302 elsewhere                       "slow"      → 200 after 2 s
    any other key             → 200, when the request came to the validation path (else 404)
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

SLOW_SECONDS: Final = 2.0
VALIDATION_PATHS: Final = frozenset({"/v1/models"})  # openai's base ends in /v1; anthropic's not


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


@dataclass
class FakeProvider:
    port: int
    received: list[Received] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _key_of(headers: dict[str, str]) -> str:
    authorization = headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        return authorization.removeprefix("Bearer ")
    return headers.get("x-api-key") or headers.get("x-custom-key") or ""


@contextmanager
def fake_provider(validation_paths: frozenset[str] = VALIDATION_PATHS) -> Iterator[FakeProvider]:
    """Serves on a free port in a thread of its own until the block ends."""
    provider = FakeProvider(0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            provider.received.append(Received("GET", self.path, headers))
            key = _key_of(headers)
            echo = {"error": {"message": f"Incorrect API key provided: {key}"}}
            if "rejected" in key:
                self._answer(401, echo)
            elif "forbidden" in key:
                self._answer(403, echo)
            elif "broken" in key:
                self._answer(500, echo)
            elif "teapot" in key:
                self._answer(418, echo)
            elif "moved" in key:
                self._answer(302, {}, {"Location": "http://127.0.0.1:9/elsewhere"})
            elif self.path not in validation_paths:
                self._answer(404, {"error": "no such path"})
            else:
                if "slow" in key:
                    time.sleep(SLOW_SECONDS)
                self._answer(200, {"data": [{"id": "model-1"}], "key": key})

        def _answer(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(payload)  # unless the client gave up (a timeout test)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    provider.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()


def unreachable_base_url() -> str:
    """A base URL on a local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
