"""What the client's tests share: the canary secrets that must never show up in an error, a repr or
a log line; a TCP forwarder that counts the connections made through it; and a fake provider for
validation on save, which takes only `CANARY_KEY` (bearer, as OpenAI's API does)."""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CANARY_KEY = "sk-CANARY-client-key-0123456789abcdef"
CANARY_SECRET = "CANARY-client-secret-0123456789abcdef"
PUMP_CHUNK = 64 * 1024


def assert_no_secret(texts: Iterable[str], *secrets: str) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text


class ConnectionCounter:
    """Listens on a free loopback port and forwards each connection to `target_port`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()

    def serve(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=_pump, args=(downstream, upstream), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


def _pump(one: socket.socket, other: socket.socket) -> None:
    with one, other, selectors.DefaultSelector() as selector:
        selector.register(one, selectors.EVENT_READ, other)
        selector.register(other, selectors.EVENT_READ, one)
        while True:
            for ready, _ in selector.select(timeout=30):
                data = ready.fileobj.recv(PUMP_CHUNK)  # type: ignore[union-attr]
                if not data:
                    return
                ready.data.sendall(data)


@contextmanager
def counting_connections(target_port: int) -> Iterator[ConnectionCounter]:
    counter = ConnectionCounter(target_port)
    thread = threading.Thread(target=counter.serve, daemon=True)
    thread.start()
    try:
        yield counter
    finally:
        counter.close()
        thread.join(timeout=5)


@contextmanager
def running_fake_provider() -> Iterator[str]:
    """A provider's API on a free port: its base URL. `GET …/models` is 200 for CANARY_KEY."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            accepted = self.headers.get("Authorization") == f"Bearer {CANARY_KEY}"
            body = b'{"object": "list", "data": []}' if accepted else b'{"error": "bad key"}'
            self.send_response(200 if accepted else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
