"""A provider on 127.0.0.1 over real HTTP/1.1: it answers by the key it is sent, the way the real
ones do (their 401 bodies echo the key), speaks enough of OpenAI's and Anthropic's APIs for their
SDKs (tests/fake_provider_answers.py), and records what it received.

By the key:

    a key holding "rejected"  → 401, the key echoed in the body     "forbidden" → 403
    "broken"                  → 500, the key echoed                 "teapot"    → 418
    "moved"                   → 302 elsewhere                       "slow"      → 200 after 2 s
    any other key             → 200 for GET of a validation path (the key echoed), else as below

Other requests: POST `/v1/chat/completions`, `/v1/embeddings` (openai's base ends in /v1),
`/v1/messages` and `/v1/messages/count_tokens` (anthropic's), streamed as server-sent events when
the body says `"stream": true`; the model picks a behaviour (fake_provider_answers.BEHAVIOURS).
Anything else is 404.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from tests import fake_provider_answers as answers

SLOW_SECONDS: Final = 2.0
VALIDATION_PATHS: Final = frozenset({"/v1/models"})  # openai's base ends in /v1; anthropic's not


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; a repeated header's values joined with ", "
    body: bytes = b""
    header_list: tuple[tuple[str, str], ...] = ()  # as sent, names lower-case


@dataclass
class FakeProvider:
    port: int
    received: list[Received] = field(default_factory=list)
    # (monotonic time, what) of each server-sent event written, and of each write that failed
    # because the client had gone.
    events_sent: list[tuple[float, str]] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)
    cut_short: int = 0  # requests whose body ended before it was all there

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def last(self, path: str) -> Received:
        return next(seen for seen in reversed(self.received) if seen.path.startswith(path))


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
        protocol_version = "HTTP/1.1"  # keep-alive, as the providers' own servers

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def do_PATCH(self) -> None:
            self._handle()

        def do_DELETE(self) -> None:
            self._handle()

        def do_HEAD(self) -> None:
            self._handle()

        def do_OPTIONS(self) -> None:
            self._handle()

        def _handle(self) -> None:
            header_list = tuple((name.lower(), value) for name, value in self.headers.items())
            headers: dict[str, str] = {}
            for name, value in header_list:
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            try:
                body = self._read_body(headers)
            except (ValueError, OSError):
                provider.cut_short += 1
                self.close_connection = True
                return
            provider.received.append(Received(self.command, self.path, headers, body, header_list))
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
            elif self.command == "GET" and self.path.partition("?")[0] in validation_paths:
                if "slow" in key:
                    time.sleep(SLOW_SECONDS)
                self._answer(200, {"data": [{"id": "model-1", "object": "model"}], "key": key})
            elif self.command == "HEAD" and self.path in validation_paths:
                self._answer(200, {"data": []})
            else:
                self._api(body, key)

        def _api(self, body: bytes, key: str) -> None:
            path = self.path.partition("?")[0]
            try:
                request: dict[str, Any] = json.loads(body) if body else {}
            except ValueError:
                request = {}
            model = str(request.get("model", ""))
            extra = {"x-request-id": "req_fake_0001", "set-cookie": "__cf_bm=fake; Path=/"}
            if model == answers.ECHO:
                extra["x-echo-key"] = f"sent {key}"
            if model == answers.HANG:
                time.sleep(answers.HANG_SECONDS)
            made = answers.answer(path, request, key, body)
            if made is None:
                self._answer(404, {"error": "no such path"})
            elif request.get("stream"):
                self._stream(made, model, extra)
            elif model in (answers.GZIP, answers.BROTLI):
                encoded = gzip.compress(json.dumps(made[0]).encode())
                encoding = "gzip" if model == answers.GZIP else "br"
                self._answer(200, made[0], {**extra, "Content-Encoding": encoding}, encoded)
            else:
                self._answer(200, made[0], extra)

        def _read_body(self, headers: dict[str, str]) -> bytes:
            if headers.get("transfer-encoding", "").lower() == "chunked":
                parts: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    part = self.rfile.read(size)
                    if len(part) < size:
                        raise ValueError("cut short")
                    parts.append(part)
                    self.rfile.readline()
            length = int(headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            if len(body) < length:
                raise ValueError("cut short")
            return body

        def _answer(
            self,
            status: int,
            body: object,
            headers: dict[str, str] | None = None,
            payload: bytes | None = None,
        ) -> None:
            payload = payload if payload is not None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if self.command == "HEAD":
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(payload)  # unless the client gave up (a timeout test)

        def _stream(self, made: answers.Made, model: str, headers: dict[str, str]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            for number, event in enumerate(answers.events(made, model)):
                try:
                    self._chunk(event.encode())
                except OSError:
                    provider.disconnects.append(time.monotonic())
                    self.close_connection = True
                    return
                provider.events_sent.append((time.monotonic(), event.split("\n", 1)[0]))
                if number == 0 and model == answers.BREAK:
                    self.connection.shutdown(socket.SHUT_RDWR)  # gone, mid-answer
                    self.close_connection = True
                    return
                time.sleep(answers.pause(model, number))
            with contextlib.suppress(OSError):
                self.wfile.write(b"0\r\n\r\n")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

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
