"""The benchmark's load phases: wrk's closed loop, bench/open_loop.py's open loop, both pinned to
the load CPU, and the rotation rewrap rate measured by bench/bench_rotation.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bench.database import (
    ADMIN_URL,
    create_database,
    drop_database,
)
from bench.servers import (
    HERE,
    HOST,
    LOAD_CPU,
    REPO,
    SERVER_CPU,
    Run,
    Server,
    cpu_seconds,
)

LUA = HERE / "load.lua"
ROTATION_RECORDS = 100_000
ROTATION_RUNS = 3
ROTATION_TIMEOUT_SECONDS = 600
ROTATION_TARGET_RECORDS_PER_S = 5_000  # issue 3


def pinned_load(argv: list[str], env: dict[str, str], timeout: float) -> str:
    completed = subprocess.run(
        ["taskset", "-c", LOAD_CPU, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return completed.stdout


def wrk(
    server: Server, method: str, users: int, token: str, seconds: int, connections: int
) -> dict[str, Any]:
    env = {**os.environ, "BENCH_USERS": str(users), "BENCH_TOKEN": token, "BENCH_METHOD": method}
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        f"http://{HOST}:{server.port}",
    ]
    cpu_before = cpu_seconds(server.pid)
    output = pinned_load(argv, env, timeout=seconds + 60)
    cpu_used = cpu_seconds(server.pid) - cpu_before
    line = next(line for line in output.splitlines() if line.startswith("BENCH_JSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["server_cpu_us_per_request"] = cpu_used * 1e6 / max(result["requests"], 1)
    result["client"] = f"wrk -t1 -c{connections} -d{seconds}s (closed loop)"
    failed = sum(result["errors"].values())
    result["failed"] = failed
    # At saturation the service sheds the odd request with a fast 503 (its 0.5 s pool wait or
    # statement timeout); they are reported with the figures, and more than one in a hundred
    # marks the figure invalid in the report rather than ending the run.
    if failed:
        print(f"bench: {server.name} {method}: {failed} non-2xx answers {result['errors']}")
    return result


def open_loop(server: Server, mode: str, token: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "BENCH_TOKEN": token, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "bench.open_loop", mode, "--port", str(server.port), *args]
    cpu_before = cpu_seconds(server.pid)
    result: dict[str, Any] = json.loads(pinned_load(argv, env, timeout=600))
    cpu_used = cpu_seconds(server.pid) - cpu_before
    result["server_cpu_us_per_request"] = cpu_used * 1e6 / max(result["requests"], 1)
    if set(result["statuses"]) != {"200"} or result.get("failures"):
        raise RuntimeError(f"{server.name} open loop: unexpected answers {result['statuses']}")
    return result


def measure_rotation(state: Run, workdir: Path) -> dict[str, Any]:
    """`keyvault rotate`'s rewrap loop over ROTATION_RECORDS records, on the server CPU.

    Its own database, so the service's rows and their dead tuples do not weigh on it; created and
    dropped here (not by the child) so that an interrupted run still drops it.
    """
    name = f"keyvault_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(create_database(name))
    state.databases.append(name)
    url = make_url(ADMIN_URL).set(drivername="postgresql+asyncpg", database=name)
    argv = [
        sys.executable, "-m", "bench.bench_rotation",
        "--database-url", url.render_as_string(hide_password=False),
        "--records", str(ROTATION_RECORDS), "--runs", str(ROTATION_RUNS), "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        completed = subprocess.run(
            ["taskset", "-c", SERVER_CPU, *argv],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=ROTATION_TIMEOUT_SECONDS,
            check=True,
        )
    finally:
        asyncio.run(drop_database(name))
        state.databases.remove(name)
    line = next(line for line in completed.stdout.splitlines() if line.startswith("BENCH_JSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    result["client"] = f"bench/bench_rotation.py on CPU {SERVER_CPU}, median of {ROTATION_RUNS}"
    return result
