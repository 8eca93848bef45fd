"""The HTTP/1.1 protocol `keyvault serve` runs: uvicorn's httptools protocol, bounded against slow
and oversized clients. uvicorn alone waits for a request head for as long as its client keeps
trickling bytes, lets the head grow without limit, and accepts connections until file descriptors
run out. Here, per worker:

- a request head must be complete within `header_timeout` of the connection opening or of the
  previous response ending, and its body within `body_timeout` of the head; a connection that
  misses its deadline is closed;
- a head longer than `max_header_bytes` gets 431 (problem+json) and the connection is closed; the
  parser holds at most that much of a head (twice that for one pipelined in the same packet as
  the request before it);
- past `max_connections` open connections, a new one makes room by closing the connection that has
  waited longest for a request head (trickling or idle clients go first; a request in flight is
  never cut); if none is waiting, the new connection is closed.

Connections closed for these reasons are counted in a warning line of `keyvault.connections`, at
most one every SHED_LOG_INTERVAL_SECONDS, so a flood of them cannot flood the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from keyvault.config import Settings, get_settings
from keyvault.errors import PROBLEM_JSON, PROBLEM_TYPE_BASE

SHED_LOG_INTERVAL_SECONDS: Final = 10.0
# Descriptors kept for everything that is not a client connection: database pools, the audit
# trail's connections, Redis, log and metrics files, the listening socket.
RESERVED_DESCRIPTORS: Final = 128
# How often deadlines are checked, as a share of the shorter timeout: a connection is closed at
# most this much of its timeout late.
_SWEEP_FRACTION: Final = 0.25
_MAX_SWEEP_SECONDS: Final = 1.0

logger = logging.getLogger("keyvault.connections")


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_header_bytes=settings.max_header_bytes,
            max_connections=min(settings.max_connections, _descriptor_budget()),
        )


def _descriptor_budget() -> int:
    """Client connections that fit under the open-file limit, beside the reserved descriptors."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, soft - RESERVED_DESCRIPTORS)


class ConnectionGuard:
    """The connections of one event loop that wait on their client, and the clock closing them.

    Each kind maps a connection to its deadline. All of a kind share one timeout and are (re)added
    at the end, so insertion order is deadline order: the sweep stops at the first one not yet
    due, and the first waiting for a head is the one that has waited longest.
    """

    def __init__(self, limits: ConnectionLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self.loop = loop
        self._heads: dict[GuardedHttpProtocol, float] = {}
        self._bodies: dict[GuardedHttpProtocol, float] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_every = min(
            _MAX_SWEEP_SECONDS, _SWEEP_FRACTION * min(limits.header_timeout, limits.body_timeout)
        )
        self._shed = ShedLog(limits.max_connections)
        self.closing = 0  # shed, and not yet reported lost

    def await_head(self, connection: GuardedHttpProtocol) -> None:
        self.forget(connection)
        self._heads[connection] = self.loop.time() + self.limits.header_timeout
        self._schedule_sweep()

    def await_body(self, connection: GuardedHttpProtocol) -> None:
        self.forget(connection)
        self._bodies[connection] = self.loop.time() + self.limits.body_timeout
        self._schedule_sweep()

    def forget(self, connection: GuardedHttpProtocol) -> None:
        self._heads.pop(connection, None)
        self._bodies.pop(connection, None)

    def make_room(self, newcomer: GuardedHttpProtocol, connections: int) -> None:
        """Past the bound, close the connection waiting longest for a head (the newcomer, which
        was added last, only when nothing else is waiting). Connections already closed by the
        guard stay among uvicorn's `connections` until the loop reports them lost; they do not
        count."""
        if connections - self.closing <= self.limits.max_connections:
            return
        oldest = next(iter(self._heads), newcomer)
        oldest.shed("connection_limit")

    def count_shed(self, reason: str) -> None:
        self._shed.count(reason, self.loop.time())

    def _schedule_sweep(self) -> None:
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._sweep_every, self._close_overdue)

    def _close_overdue(self) -> None:
        self._sweep = None
        now = self.loop.time()
        for waiting, reason in ((self._heads, "header_timeout"), (self._bodies, "body_timeout")):
            while waiting:
                connection, deadline = next(iter(waiting.items()))
                if deadline > now:
                    break
                connection.shed(reason)
        if self._heads or self._bodies:
            self._schedule_sweep()


class ShedLog:
    """Connections closed, by reason; logged at once, then at most once an interval (what is
    closed in between is counted into the next line)."""

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._counts: Counter[str] = Counter()
        self._last_line = float("-inf")

    def count(self, reason: str, now: float) -> None:
        self._counts[reason] += 1
        if now - self._last_line < SHED_LOG_INTERVAL_SECONDS:
            return
        logger.warning(
            "closed connections of slow, oversized or excess clients",
            extra={
                "event": "connections_shed",
                "closed": dict(self._counts),
                "max_connections": self._max_connections,
            },
        )
        self._counts.clear()
        self._last_line = now


_guard: ConnectionGuard | None = None


def guard_for(loop: asyncio.AbstractEventLoop) -> ConnectionGuard:
    """The guard of this process's serving loop, with the limits from its settings."""
    global _guard
    if _guard is None or _guard.loop is not loop:
        _guard = ConnectionGuard(ConnectionLimits.from_settings(get_settings()), loop)
    return _guard


class GuardedHttpProtocol(HttpToolsProtocol):
    """One connection; passed to uvicorn as `http=`. Adds deadlines, the head cap and the
    connection bound around uvicorn's parsing, and leaves requests themselves to it."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = guard_for(self.loop)
        # Where the parser is: in a head (counted against the cap) or past it, in a body.
        self._in_head = True
        self._head_bytes = 0
        # After a 431 the rest of what the client sends is read and dropped (see _refuse_head).
        self._refused = False
        self._dropped = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._guard.await_head(self)
        self._guard.make_room(self, len(self.connections))

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.forget(self)
        if self._dropped:
            self._guard.closing -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        cap = self._guard.limits.max_header_bytes
        if self._in_head and self._head_bytes + len(data) <= cap:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Fed in pieces no longer than what a head may still take, so the cap is checked before
        # the parser buffers past it. A head that begins inside a piece fed after a message
        # completed goes uncounted for the rest of that piece: a head holds at most twice the cap.
        while data and not self.transport.is_closing():
            room = cap - self._head_bytes if self._in_head else cap
            if room <= 0:
                self._refuse_head()
                return
            piece, data = data[:room], data[room:]
            if self._in_head:
                self._head_bytes += len(piece)
            super().data_received(piece)

    def on_headers_complete(self) -> None:
        self._in_head = False
        previous = self.cycle
        super().on_headers_complete()
        if previous is None or previous.response_complete:
            self._guard.await_body(self)
        else:
            # Queued behind a request in flight, with reading paused: its body is waited for
            # once it starts (on_response_complete).
            self._guard.forget(self)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0
        # The next head is waited for once this request is answered too (its response may have
        # gone before the body was read, as for a 401).
        if self.cycle is not None and self.cycle.response_complete:
            self._guard.await_head(self)
        else:
            self._guard.forget(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing() or self.pipeline:
            return  # closing, or the next request is still queued behind one in flight
        if self.cycle.response_complete:
            if self._in_head:
                self._guard.await_head(self)
        elif not self._in_head:
            self._guard.await_body(self)  # a queued request has started, its body still to come

    def shed(self, reason: str) -> None:
        """Close at once, without flushing: a client that stopped sending may not be reading."""
        self._guard.forget(self)
        if self._dropped:
            return
        if not self._refused:  # its 431 was counted already
            self._guard.count_shed(reason)
        self._dropped = True
        self._guard.closing += 1
        self.transport.abort()

    def _refuse_head(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head while the previous response is still being sent: no room for an
            # answer in between.
            self.shed("header_too_large")
            return
        self._guard.count_shed("header_too_large")
        self._refused = True
        self.transport.write(self._header_too_large_response())
        if self.transport.can_write_eof():
            # Close our side only, and keep reading (and dropping) until the client closes or its
            # head deadline passes: closing with its bytes unread would reset the connection, and
            # the reset can destroy the 431 before the client reads it.
            self.transport.write_eof()
        else:
            self.transport.close()

    def _header_too_large_response(self) -> bytes:
        cap = self._guard.limits.max_header_bytes
        body = json.dumps(
            {
                "type": PROBLEM_TYPE_BASE + "header-fields-too-large",
                "title": "Request header fields too large",
                "status": 431,
                "detail": f"The request line and headers must fit in {cap} bytes.",
            }
        ).encode()
        head = [STATUS_LINE[431]]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            f"content-type: {PROBLEM_JSON}\r\n".encode(),
            f"content-length: {len(body)}\r\n".encode(),
            b"connection: close\r\n\r\n",
        ]
        return b"".join(head) + body
