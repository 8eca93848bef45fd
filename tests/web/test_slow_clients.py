"""Slow, oversized and excess clients against the real `keyvault serve`, over raw sockets.

Short timeouts and small bounds are set through the environment so each test takes seconds. Every
socket has a timeout and is closed by the test that opened it. They touch no stored key, so one
database (SQLite) is enough.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from keyvault.web.http_protocol import RESERVED_DESCRIPTORS, ConnectionLimits
from tests.conftest import key_path, make_settings, mint
from tests.real_server import RunningServer, server_environment, serving

pytestmark = pytest.mark.server

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MAX_HEADER_BYTES = 8192
MAX_CONNECTIONS = 20
# Allowance for a late sweep and a busy machine when checking that a deadline was kept.
MARGIN_SECONDS = 3.0
SOCKET_TIMEOUT = 10.0
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def sqlite_url(directory: Path) -> str:
    return f"sqlite+aiosqlite:///{directory / 'keyvault.db'}"


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("guarded")
    env = server_environment(
        sqlite_url(workdir),
        KEYVAULT_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        KEYVAULT_BODY_TIMEOUT=str(BODY_TIMEOUT),
        KEYVAULT_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
    )
    with serving(workdir, env) as server:
        yield server


@pytest.fixture(scope="module")
def bounded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("bounded")
    # A long header timeout: here only the connection bound may close anything.
    env = server_environment(
        sqlite_url(workdir),
        KEYVAULT_HEADER_TIMEOUT="60",
        KEYVAULT_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    )
    with serving(workdir, env) as server:
        yield server


def connect(server: RunningServer, stack: ExitStack) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT)
    return stack.enter_context(connection)


def closed_by_server(connection: socket.socket) -> bool:
    """Whether the server has closed this connection; never blocks, drops what it reads."""
    try:
        while select.select([connection], [], [], 0)[0]:
            if not connection.recv(65536):
                return True
    except OSError:  # reset: closed without reading what we sent
        return True
    return False


def read_until_closed(connection: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def healthz_status(server: RunningServer) -> int:
    return httpx.get(f"{server.base_url}/healthz", timeout=SOCKET_TIMEOUT).status_code


def shed_lines(server: RunningServer) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "connections_shed"]


def wait_for_shed_line(server: RunningServer, reason: str) -> dict[str, object]:
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while time.monotonic() < deadline:
        for line in shed_lines(server):
            closed = line.get("closed")
            if isinstance(closed, dict) and reason in closed:
                return line
        time.sleep(0.05)  # polling interval for the log file, not a wait for an outcome
    raise AssertionError(f"no connections_shed line naming {reason}:\n{server.output()}")


def test_heads_trickled_a_byte_at_a_time_are_cut_off_while_others_are_served(
    guarded_server: RunningServer,
) -> None:
    with ExitStack() as stack:
        started = time.monotonic()
        trickling = {connect(guarded_server, stack): started for _ in range(100)}
        trickles = {connection: endless_head() for connection in trickling}
        closed_after: dict[socket.socket, float] = {}
        served_meanwhile = False
        deadline = started + HEADER_TIMEOUT + MARGIN_SECONDS
        while len(closed_after) < len(trickling) and time.monotonic() < deadline:
            for connection, opened in trickling.items():
                if connection in closed_after:
                    continue
                if closed_by_server(connection):
                    closed_after[connection] = time.monotonic() - opened
                    continue
                try:
                    connection.send(next(trickles[connection]))
                except OSError:
                    closed_after[connection] = time.monotonic() - opened
            if not served_meanwhile:
                assert healthz_status(guarded_server) == 200
                served_meanwhile = True
            select.select(list(set(trickling) - set(closed_after)), [], [], 0.2)

    assert served_meanwhile
    assert len(closed_after) == len(trickling), "trickling connections still open"
    assert min(closed_after.values()) >= HEADER_TIMEOUT * 0.9
    assert max(closed_after.values()) <= HEADER_TIMEOUT + MARGIN_SECONDS
    assert healthz_status(guarded_server) == 200


def endless_head() -> Iterator[bytes]:
    """A valid head that never ends, a byte at a time."""
    yield from (PARTIAL_HEAD[i : i + 1] for i in range(len(PARTIAL_HEAD)))
    yield from (b"X-Trickle: "[i : i + 1] for i in range(11))
    while True:
        yield b"a"


def test_a_body_that_stops_arriving_is_cut_off_after_the_body_timeout(
    guarded_server: RunningServer,
) -> None:
    sub = "slow-body"
    head = (
        f"PUT {key_path(sub)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {mint(sub, 'api-key:write')}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    with ExitStack() as stack:
        connection = connect(guarded_server, stack)
        started = time.monotonic()
        connection.sendall(head + b'{"api_key": "sk-')
        read_until_closed(connection)  # bounded by the socket timeout
        elapsed = time.monotonic() - started
    assert BODY_TIMEOUT * 0.9 <= elapsed <= BODY_TIMEOUT + MARGIN_SECONDS


def test_a_head_over_the_cap_gets_431_before_it_ends_and_memory_stays_flat(
    guarded_server: RunningServer,
) -> None:
    rss_before = resident_kib(guarded_server.pid)
    piece = b"a" * 65536
    answers = []
    with ExitStack() as stack:
        for _ in range(4):
            connection = connect(guarded_server, stack)
            connection.sendall(PARTIAL_HEAD + b"X-Padding: " + piece)
            # The head has not ended: an answer now means it was refused without waiting for it.
            readable, _, _ = select.select([connection], [], [], SOCKET_TIMEOUT)
            assert readable, "no answer to a head eight times over the cap"
            answers.append(connection.recv(65536))
            keep_sending(connection, piece, total=4 * 1024 * 1024)
            read_until_closed(connection)
    rss_after = resident_kib(guarded_server.pid)

    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"content-type: application/problem+json" in head
        assert b"connection: close" in head
        assert json.loads(body)["status"] == 431
    assert rss_after - rss_before < 16 * 1024, (rss_before, rss_after)
    assert healthz_status(guarded_server) == 200


def keep_sending(connection: socket.socket, piece: bytes, total: int) -> None:
    """Go on sending header bytes, as a client that does not read would, until `total` or the
    server closes."""
    try:
        for _ in range(total // len(piece)):
            connection.sendall(piece)
    except OSError:
        pass


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


def test_a_head_under_the_cap_is_served(guarded_server: RunningServer) -> None:
    with ExitStack() as stack:
        connection = connect(guarded_server, stack)
        padding = b"a" * (MAX_HEADER_BYTES - 200)
        connection.sendall(
            PARTIAL_HEAD + b"X-Padding: " + padding + b"\r\nConnection: close\r\n\r\n"
        )
        answer = read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_malformed_http_gets_a_plain_text_400_and_the_connection_closes(
    guarded_server: RunningServer,
) -> None:
    with ExitStack() as stack:
        connection = connect(guarded_server, stack)
        connection.sendall(b"GET /healthz HTTP/1.1\r\nBad Header Line\r\n\r\n")
        answer = read_until_closed(connection)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"content-type: text/plain; charset=utf-8" in head
    assert body == b"Invalid HTTP request received."


def test_past_the_connection_bound_waiting_connections_are_shed_and_clients_still_served(
    bounded_server: RunningServer,
) -> None:
    with ExitStack() as stack:
        slow = []
        for _ in range(2 * MAX_CONNECTIONS):
            connection = connect(bounded_server, stack)
            connection.sendall(PARTIAL_HEAD)
            slow.append(connection)
        deadline = time.monotonic() + SOCKET_TIMEOUT
        shed: set[socket.socket] = set()
        while len(shed) < MAX_CONNECTIONS and time.monotonic() < deadline:
            shed |= {connection for connection in slow if closed_by_server(connection)}
            select.select([c for c in slow if c not in shed], [], [], 0.05)
        assert len(shed) >= MAX_CONNECTIONS, f"only {len(shed)} shed"
        # The oldest went first: the newest are still held open.
        assert not shed & set(slow[-MAX_CONNECTIONS // 2 :])
        assert healthz_status(bounded_server) == 200
        line = wait_for_shed_line(bounded_server, "connection_limit")
        assert line["level"] == "WARNING"
        assert line["max_connections"] == MAX_CONNECTIONS
    assert [healthz_status(bounded_server) for _ in range(5)] == [200] * 5


def test_the_connection_bound_stays_under_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    settings = make_settings("sqlite+aiosqlite:///unused.db", max_connections=10**9)
    limits = ConnectionLimits.from_settings(settings)
    assert limits.max_connections == soft - RESERVED_DESCRIPTORS
