"""The provider proxy's overhead: calls through keyvault against the same calls straight to a local
fake provider (bench/fake_provider_app.py), in one run.

    flock /tmp/bench.lock .venv/bin/python -m bench.bench_proxy [--latency-ms 50]

What it does, all on 127.0.0.1 and all undone on exit (also on Ctrl-C or an error):
  1. creates a throw-away Postgres database, migrates it and seeds N users with an openai key;
  2. starts the fake provider (uvicorn, one worker, pinned to CPU 1 with the load generators) and
     `keyvault serve` with its openai base URL there (one worker, pinned to CPU 0); a service token
     with `api-key:use users:any` names a random user in X-Keyvault-User on every call;
  3. the median latency keyvault adds: the same `POST /v1/chat/completions` at a fixed rate, open
     loop, straight and through `/proxy/openai/chat/completions`, the provider answering at once;
  4. requests/s at the same wrk concurrency, straight and through the proxy, in alternating rounds,
     the provider answering after --latency-ms (a real one takes hundreds of ms); then once more
     with a provider that answers at once, where keyvault's own CPU is the bound;
  5. how late the first server-sent event arrives after the provider sent it (its `sent_ns`),
     straight and through the proxy, one stream at a time.
Targets: ≤ 2 ms added at the median, ≥ 0.6x the requests/s, first event ≤ 10 ms after it was
sent. Prints a table and writes bench-results/proxy-<time>.json and proxy-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from bench.database import create_database, drop_database, seed
from bench.open_loop import Connection, connect, summarise
from bench.phases import pinned_load
from bench.servers import (
    HERE,
    HOST,
    LOAD_CPU,
    REPO,
    Run,
    Server,
    check_machine,
    cpu_seconds,
    free_port,
    service_environment,
    settings_of,
    start,
    stop,
    stopped_on_signals,
)
from keyvault.auth.tokens import mint_token

LUA = HERE / "proxy_load.lua"
PROXIED = "/proxy/openai/chat/completions"
DIRECT = "/v1/chat/completions"
BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"Say hello."}]}'
STREAM_BODY = b'{"model":"bench-model","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
TARGETS = {"added_p50_ms": 2.0, "rps_ratio": 0.6, "first_event_ms": 10.0}
_SENT = re.compile(rb'"sent_ns": (\d+)')


def _request(path: str, port: int, token: str, user: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"X-Keyvault-User: {user}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def fixed_rate(
    port: int, path: str, token: str, users: int, rate: float, seconds: float
) -> dict[str, Any]:
    """Calls due at start + i/rate, latency from the due time (as bench/open_loop.py measures)."""
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(16):
        idle.put_nowait(await connect(port))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def one(connection: Connection, due: float, request: bytes) -> None:
        status = await connection.send(request)
        latencies.append(time.perf_counter() - due)
        statuses[status] = statuses.get(status, 0) + 1
        idle.put_nowait(connection)

    start_at = time.perf_counter() + 0.05
    for i in range(int(rate * seconds)):
        due = start_at + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        connection = await idle.get()
        request = _request(path, port, token, f"bench-user-{i % users + 1:05d}", BODY)
        task = asyncio.create_task(one(connection, due, request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    while not idle.empty():
        transport = idle.get_nowait().transport
        if transport is not None:
            transport.close()
    return {"rate": rate, "requests": len(latencies), "statuses": statuses, **summarise(latencies)}


async def first_events(port: int, path: str, token: str, streams: int) -> dict[str, Any]:
    """One stream at a time: how long after the provider sent its first event it arrived."""
    delays: list[float] = []
    for number in range(streams):
        reader, writer = await asyncio.open_connection(HOST, port)
        user = f"bench-user-{number % 10 + 1:05d}"
        writer.write(_request(path, port, token, user, STREAM_BODY, "Connection: close\r\n"))
        received = b""
        while (sent := _SENT.search(received)) is None or b"\n\n" not in received[sent.end() :]:
            chunk = await reader.read(65536)
            if not chunk:
                raise RuntimeError(f"stream {number} ended before its first event: {received!r}")
            received += chunk
        delays.append((time.monotonic_ns() - int(sent.group(1))) / 1e9)
        while await reader.read(65536):  # the rest of the stream, to its end
            pass
        writer.close()
        await writer.wait_closed()
    return {"streams": streams, **summarise(delays)}


def wrk(
    port: int, path: str, token: str, users: int, latency_ms: int, args: argparse.Namespace
) -> dict[str, Any]:
    env = {
        **os.environ,
        "BENCH_PATH": path,
        "BENCH_TOKEN": token,
        "BENCH_USERS": str(users),
        "BENCH_LATENCY_MS": str(latency_ms),
    }
    argv = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "10s"]
    output = pinned_load([*argv, "-s", str(LUA), f"http://{HOST}:{port}"], env, args.duration + 60)
    line = next(line for line in output.splitlines() if line.startswith("BENCH_JSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["failed"] = sum(result["errors"].values())
    return result


def run(args: argparse.Namespace, state: Run, workdir: Path) -> dict[str, Any]:
    name = f"keyvault_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(create_database(name))
    state.databases.append(name)
    bin_dir = Path(sys.executable).parent
    fake_port = free_port()
    fake = Server(
        "fake-provider",
        [
            sys.executable, "-m", "uvicorn", "--factory", "bench.fake_provider_app:create_app",
            "--app-dir", str(REPO), "--host", HOST, "--port", str(fake_port),
            "--no-access-log", "--log-level", "warning", "--lifespan", "off",
        ],
        {**os.environ, "PYTHONPATH": str(REPO)},
        fake_port,
    )  # fmt: skip
    env = service_environment(name) | {"KEYVAULT_OPENAI_BASE_URL": f"http://{HOST}:{fake_port}/v1"}
    print(f"bench: database {name}; migrating and seeding {args.users} users", flush=True)
    subprocess.run([str(bin_dir / "keyvault"), "migrate"], env=env, cwd=workdir, check=True)
    settings = settings_of(env)
    asyncio.run(seed(settings, args.users))
    token = mint_token(settings, "bench-service", "api-key:use users:any", 3600)
    port = free_port()
    keyvault = Server(
        "service",
        [str(bin_dir / "keyvault"), "serve", "--host", HOST, "--port", str(port)],
        env,
        port,
    )
    state.servers += [fake, keyvault]
    start(fake, workdir, cpu=LOAD_CPU)
    start(keyvault, workdir)
    os.sched_setaffinity(0, {int(LOAD_CPU)})  # this process's own clients, beside the load
    paths = {"direct": (fake_port, DIRECT), "proxied": (port, PROXIED)}
    results: dict[str, Any] = {"args": vars(args) | {"out": str(args.out)}}

    print("bench: warming up", flush=True)
    for target_port, path in paths.values():
        wrk(target_port, path, token, args.users, 0, args)
    for kind, (target_port, path) in paths.items():
        print(f"bench: {kind}, open loop at {args.rate}/s", flush=True)
        results[f"{kind}_fixed_rate"] = uvloop.run(
            fixed_rate(target_port, path, token, args.users, args.rate, args.seconds)
        )
    rounds: dict[str, list[dict[str, Any]]] = {"direct": [], "proxied": []}
    for number in range(1, args.rounds + 1):
        for kind, (target_port, path) in paths.items():
            print(
                f"bench: round {number}, {kind}, provider latency {args.latency_ms} ms", flush=True
            )
            before = cpu_seconds(keyvault.pid)
            measured = wrk(target_port, path, token, args.users, args.latency_ms, args)
            measured["keyvault_cpu_us_per_request"] = (
                (cpu_seconds(keyvault.pid) - before) * 1e6 / max(measured["requests"], 1)
            )
            rounds[kind].append(measured)
    results["rounds"] = rounds
    for kind, (target_port, path) in paths.items():
        print(f"bench: {kind}, provider answering at once (CPU-bound)", flush=True)
        before = cpu_seconds(keyvault.pid)
        measured = wrk(target_port, path, token, args.users, 0, args)
        measured["keyvault_cpu_us_per_request"] = (
            (cpu_seconds(keyvault.pid) - before) * 1e6 / max(measured["requests"], 1)
        )
        results[f"{kind}_instant"] = measured
    for kind, (target_port, path) in paths.items():
        print(f"bench: {kind}, first server-sent events", flush=True)
        results[f"{kind}_first_event"] = uvloop.run(
            first_events(target_port, path, token, args.streams)
        )
    return results


def report(results: dict[str, Any]) -> dict[str, Any]:
    direct, proxied = results["direct_fixed_rate"], results["proxied_fixed_rate"]
    added_p50 = (proxied["p50_us"] - direct["p50_us"]) / 1000
    per_round = [
        round(p["rps"] / d["rps"], 3)
        for d, p in zip(results["rounds"]["direct"], results["rounds"]["proxied"], strict=True)
    ]
    rps = {
        kind: statistics.median(r["rps"] for r in runs) for kind, runs in results["rounds"].items()
    }
    cpu = statistics.median(r["keyvault_cpu_us_per_request"] for r in results["rounds"]["proxied"])
    instant = results["proxied_instant"]["rps"] / results["direct_instant"]["rps"]
    first = results["proxied_first_event"]
    summary = {
        "added_p50_ms": round(added_p50, 3),
        "direct_p50_ms": round(direct["p50_us"] / 1000, 3),
        "proxied_p50_ms": round(proxied["p50_us"] / 1000, 3),
        "proxied_p99_ms": round(proxied["p99_us"] / 1000, 3),
        "rps_direct": round(rps["direct"]),
        "rps_proxied": round(rps["proxied"]),
        "rps_ratio": round(rps["proxied"] / rps["direct"], 3),
        "rps_ratio_per_round": per_round,
        "keyvault_cpu_us_per_call": round(cpu),
        "instant_rps_direct": round(results["direct_instant"]["rps"]),
        "instant_rps_proxied": round(results["proxied_instant"]["rps"]),
        "instant_rps_ratio": round(instant, 3),
        "instant_keyvault_cpu_us_per_call": round(
            results["proxied_instant"]["keyvault_cpu_us_per_request"]
        ),
        "first_event_ms": round(first["p50_us"] / 1000, 3),
        "first_event_p90_ms": round(first["p90_us"] / 1000, 3),
        "first_event_max_ms": round(first["max_us"] / 1000, 3),
        "first_event_direct_ms": round(results["direct_first_event"]["p50_us"] / 1000, 3),
        "failed": {
            kind: sum(r["failed"] for r in runs) for kind, runs in results["rounds"].items()
        },
    }
    met = {
        "added_p50_ms": summary["added_p50_ms"] <= TARGETS["added_p50_ms"],
        "rps_ratio": summary["rps_ratio"] >= TARGETS["rps_ratio"],
        "first_event_ms": summary["first_event_ms"] <= TARGETS["first_event_ms"],
    }
    print()
    for figure, value in summary.items():
        target = (
            f"  (target {TARGETS[figure]}: {'met' if met[figure] else 'MISSED'})"
            if figure in met
            else ""
        )
        print(f"{figure:36} {value}{target}")
    return {"summary": summary, "targets": TARGETS, "met": met, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description="the provider proxy against direct calls")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=50, help="the fake provider's, for rps")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds per target")
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop calls per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="open-loop seconds")
    parser.add_argument("--streams", type=int, default=30, help="streams per target")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    args = parser.parse_args()
    check_machine()
    state = Run()
    with stopped_on_signals(), tempfile.TemporaryDirectory(prefix="keyvault-bench-") as tmp:
        try:
            document = report(run(args, state, Path(tmp)))
        finally:
            for server in reversed(state.servers):
                stop(server)
            for database in state.databases:
                asyncio.run(drop_database(database))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (args.out / f"proxy-{stamp}.json", args.out / "proxy-latest.json"):
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out / f'proxy-{stamp}.json'}")


if __name__ == "__main__":
    main()
