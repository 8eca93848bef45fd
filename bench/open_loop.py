"""A fixed-rate (open-loop) HTTP/1.1 load client, for honest tail latencies.

wrk is closed-loop: each connection waits for its answer before sending the next request, so a
stalled server is sent less work and its stall hides in the averages (coordinated omission). wrk2,
which fixes that, is not packaged in Debian; this client does what it does for our one URL shape:
request i is due at start + i/rate, and its latency is measured from that due time, so time spent
queued behind a slow answer counts. Keep-alive connections come from a bounded pool; a request
that finds none idle waits for one (still on the clock).

    BENCH_TOKEN=… python -m bench.open_loop rate --port 8000 --rate 1000 --users 2000
    BENCH_TOKEN=… python -m bench.open_loop each-twice --port 8000 --users 2000

The token comes from the environment so it never shows in a process list. Prints one JSON object.
Only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from typing import Any, cast

import httptools
import uvloop

HOST = "127.0.0.1"
RESPONSE_TIMEOUT_SECONDS = 10.0


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await asyncio.wait_for(self.waiter, RESPONSE_TIMEOUT_SECONDS)


def request_for(sub: str, token: str, port: int) -> bytes:
    return (
        f"GET /users/{sub}/api-keys/openai HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()


def subject(index: int) -> str:
    return f"bench-user-{index:05d}"


async def connect(port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(Connection, HOST, port)
    return protocol


def summarise(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e6

    return {
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "max_us": ordered[-1] * 1e6,
        "median_us": statistics.median(ordered) * 1e6,
    }


async def run_at_rate(
    port: int, rate: float, duration: float, users: int, token: str, connections: int
) -> dict[str, Any]:
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await connect(port))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures = 0
    in_flight: set[asyncio.Task[None]] = set()

    async def one(connection: Connection, due: float, request: bytes) -> None:
        nonlocal failures
        try:
            status = await connection.send(request)
        except Exception:  # any failure is counted, and the pool never loses a connection
            failures += 1
            connection = await connect(port)
        else:
            latencies.append(time.perf_counter() - due)
            statuses[status] = statuses.get(status, 0) + 1
        idle.put_nowait(connection)

    total = int(rate * duration)
    interval = 1.0 / rate
    start = time.perf_counter() + 0.05
    worst_dispatch_lag = 0.0
    for i in range(total):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        connection = await idle.get()
        worst_dispatch_lag = max(worst_dispatch_lag, time.perf_counter() - due)
        request = request_for(subject(random.randint(1, users)), token, port)
        task = asyncio.create_task(one(connection, due, request))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    elapsed = time.perf_counter() - start
    while not idle.empty():
        connection = idle.get_nowait()
        if connection.transport is not None:
            connection.transport.close()
    return {
        "client": "bench/open_loop.py (fixed rate, latency from due time)",
        "target_rate": rate,
        "achieved_rate": len(latencies) / elapsed,
        "requests": len(latencies),
        "failures": failures,
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "worst_dispatch_lag_us": worst_dispatch_lag * 1e6,
        **summarise(latencies),
    }


async def read_each_twice(port: int, users: int, token: str) -> dict[str, Any]:
    """Every user in order, one request at a time: its first read, then at once its second.

    Pairing the two reads of each user puts them in the same moment, so whatever else the machine
    is doing weighs on both alike; the medians then compare a first read with a warm one.
    """
    connection = await connect(port)
    first: list[float] = []
    again: list[float] = []
    statuses: dict[int, int] = {}
    try:
        for index in range(1, users + 1):
            request = request_for(subject(index), token, port)
            for latencies in (first, again):
                began = time.perf_counter()
                status = await connection.send(request)
                latencies.append(time.perf_counter() - began)
                statuses[status] = statuses.get(status, 0) + 1
    finally:
        if connection.transport is not None:
            connection.transport.close()
    return {
        "requests": len(first) + len(again),
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "first_read": summarise(first),
        "second_read": summarise(again),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["rate", "each-twice"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    token = os.environ["BENCH_TOKEN"]
    if args.mode == "rate":
        work = run_at_rate(args.port, args.rate, args.duration, args.users, token, args.connections)
    else:
        work = read_each_twice(args.port, args.users, token)
    result = uvloop.run(work)  # the same event loop uvicorn runs the servers on
    print(json.dumps(result))


if __name__ == "__main__":
    main()
