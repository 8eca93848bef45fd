"""The connections under a provider's client: httpcore's HTTP/1.1 connections (the core of httpx)
over asyncio streams on the running loop (uvloop under `keyvault serve`), kept in a pool of idle
ones.

httpcore's own pool goes through anyio, whose socket attributes are rebuilt on every lookup, and
re-examines every connection (and, for each, counts the idle ones again) whenever it assigns a
request or takes one back; with a few dozen connections that bookkeeping outweighed the rest of a
proxied call. Here a call takes the idle connection used last (one check: is it still open?) or
opens a new one, and gives it back once its answer has been read to the end.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

import httpcore
from httpcore import AsyncHTTP11Connection, AsyncNetworkStream


class AsyncioStream(AsyncNetworkStream):
    """One connection's socket, as httpcore reads and writes it; timeouts and failures as
    httpcore's own.

    A request's head is held back until the first piece of its body (or the first read for its
    answer), so that the two go out in one write, one system call instead of two.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._head = b""  # a request's head, not sent yet
        self._next_is_head = True  # no write since the last read: the next starts a request

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._head:
            await self._send(b"", timeout)
        self._next_is_head = True
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout("read timed out") from None
        except OSError as error:
            raise httpcore.ReadError(type(error).__name__) from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._next_is_head:
            self._head, self._next_is_head = buffer, False
            return
        await self._send(buffer, timeout)

    async def _send(self, buffer: bytes, timeout: float | None) -> None:
        data, self._head = self._head + buffer, b""
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(data)
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout("write timed out") from None
        except OSError as error:
            raise httpcore.WriteError(type(error).__name__) from None

    async def aclose(self) -> None:
        # Not waited for: a peer that stopped reading must not hold a closing call up.
        self._writer.transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            self._writer.transport.abort()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as error:
            self._writer.transport.abort()
            raise httpcore.ConnectError(type(error).__name__) from None
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of an idle connection: readable means the server closed it (or spoke out of
            # turn). The loop reads sockets as data comes, so the stream's own state tells.
            return self._reader.at_eof() or self._writer.transport.is_closing()
        names = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername"}
        return self._writer.get_extra_info(names.get(info, info))


class Connections:
    """One origin's HTTP/1.1 connections: as many as there are calls at once, `idle_max` of them
    kept for the next calls, each for at most `idle_seconds`."""

    def __init__(
        self,
        origin: httpcore.Origin,
        ssl_context: ssl.SSLContext | None,
        idle_max: int,
        idle_seconds: float,
    ) -> None:
        self._origin = origin
        self._host = origin.host.decode("ascii")
        self._ssl_context = ssl_context
        self._idle: list[AsyncHTTP11Connection] = []
        self._idle_max = idle_max
        self._idle_seconds = idle_seconds

    async def send(self, request: httpcore.Request) -> httpcore.Response:
        """The response to `request`, its body still to be read; its connection comes back to
        the pool when that body is closed."""
        connection = await self._connection(request.extensions["timeout"]["connect"])
        try:
            response = await connection.handle_async_request(request)
        except BaseException:
            await connection.aclose()
            raise
        response.stream = _Returning(cast(_Body, response.stream), connection, self)
        return response

    async def _connection(self, timeout: float) -> AsyncHTTP11Connection:
        while self._idle:
            connection = self._idle.pop()  # the one used last: the least likely to have expired
            if connection.is_idle() and not connection.has_expired():
                return connection
            await connection.aclose()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(self._host, self._origin.port)
        except TimeoutError:
            raise httpcore.ConnectTimeout("connect timed out") from None
        except OSError as error:
            raise httpcore.ConnectError(type(error).__name__) from None
        stream: AsyncNetworkStream = AsyncioStream(reader, writer)
        if self._ssl_context is not None:
            stream = await stream.start_tls(self._ssl_context, self._host, timeout)
        return AsyncHTTP11Connection(self._origin, stream, keepalive_expiry=self._idle_seconds)

    async def give_back(self, connection: AsyncHTTP11Connection) -> None:
        if connection.is_idle() and len(self._idle) < self._idle_max:
            self._idle.append(connection)
        else:
            await connection.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()


class _Body(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class _Returning:
    """A response body that, once closed, gives its connection back (or closes it, when the body
    was not read to its end)."""

    def __init__(self, stream: _Body, connection: AsyncHTTP11Connection, to: Connections) -> None:
        self._stream = stream
        self._connection = connection
        self._to: Connections | None = to

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if self._to is None:
            return
        to, self._to = self._to, None
        await self._stream.aclose()
        await to.give_back(self._connection)
