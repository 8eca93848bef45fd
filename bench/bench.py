"""keyvault's benchmark: the service against a bare FastAPI + asyncpg ceiling, in one run.

    make bench                       # or: .venv/bin/python -m bench.bench [--users 2000]

What it does, all on 127.0.0.1 and all undone on exit (also on Ctrl-C or an error):
  1. creates a throw-away Postgres database, migrates it with `keyvault migrate`, and seeds N users
     through `service.put_api_key` (the service's own sealing and SQL); copies the rows into a
     `ceiling_api_keys` table for the ceiling app (bench/ceiling_app.py);
  2. starts `keyvault serve` and the ceiling under uvicorn, each one worker pinned to CPU 0, and runs
     every load generator pinned to CPU 1;
  3. closed loop (wrk + bench/load.lua, random users, bearer token): max requests/s and
     latency for GET and PUT on both apps, in rounds that alternate the apps (medians reported);
  4. open loop (bench/open_loop.py, fixed rate, latency from each request's due time): GET on
     both apps at the same rate, half the service's closed-loop maximum;
  5. restarts the service and reads every user once, then again: first read after a restart
     against a warm read;
  6. the service worker's peak RSS (VmHWM) after the load phases;
  7. with both apps stopped: the rotation rewrap rate for 100,000 records in a second throw-away
     database (bench/bench_rotation.py pinned to CPU 0), as records/s and as a ratio to one
     plain UPDATE of the same rows in the same run.
Prints a table and writes bench-results/bench-<time>.json and bench-results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import uuid
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.database import (
    asyncpg_dsn,
    create_database,
    drop_database,
    seed,
)
from bench.phases import (
    ROTATION_RECORDS,
    ROTATION_TARGET_RECORDS_PER_S,
    measure_rotation,
    open_loop,
    wrk,
)
from bench.servers import (
    HOST,
    LOAD_CPU,
    REPO,
    SERVER_CPU,
    Run,
    Server,
    check_machine,
    free_port,
    peak_rss_mb,
    service_environment,
    settings_of,
    start,
    stop,
    stopped_on_signals,
)
from keyvault.auth.tokens import mint_token


def ratio(value: float, ceiling: float) -> float:
    return round(value / ceiling, 3) if ceiling else float("nan")


def run(args: argparse.Namespace, state: Run, workdir: Path) -> dict[str, Any]:
    name = f"keyvault_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(create_database(name))
    state.databases.append(name)
    service_env = service_environment(name)
    bin_dir = Path(sys.executable).parent
    print(f"bench: database {name}; migrating and seeding {args.users} users", flush=True)
    subprocess.run(
        [str(bin_dir / "keyvault"), "migrate"],
        env=service_env,
        cwd=workdir,
        check=True,
        timeout=300,
    )
    settings = settings_of(service_env)
    asyncio.run(seed(settings, args.users))
    token = mint_token(settings, "bench-caller", "api-key:read api-key:write users:any", 3600)

    keyvault = Server(
        "service",
        [str(bin_dir / "keyvault"), "serve", "--host", HOST, "--port", str(free_port())],
        service_env,
        0,
    )
    keyvault.port = int(keyvault.argv[-1])
    ceiling_port = free_port()
    ceiling = Server(
        "ceiling",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "bench.ceiling_app:create_app",
            "--app-dir",
            str(REPO),
            "--host",
            HOST,
            "--port",
            str(ceiling_port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        {**os.environ, "BENCH_CEILING_DSN": asyncpg_dsn(name)},
        ceiling_port,
    )
    state.servers += [keyvault, ceiling]
    for server in (ceiling, keyvault):
        start(server, workdir)

    seconds, conns, users = args.duration, args.connections, args.users
    results: dict[str, Any] = {}
    print("bench: warming up", flush=True)
    for method in ("GET", "PUT"):
        for server in (ceiling, keyvault):
            wrk(server, method, users, token, args.warmup, conns)
    # Rounds alternate the two apps, so that a change in the machine's other load weighs on both
    # alike; each figure is the median over rounds, and the per-round ratios are kept in the JSON.
    rounds: dict[str, list[dict[str, Any]]] = {}
    for round_number in range(1, args.rounds + 1):
        for method in ("GET", "PUT"):
            for server in (ceiling, keyvault):
                print(f"bench: round {round_number} closed loop {method} {server.name}", flush=True)
                key = f"{server.name}_{method.lower()}_max"
                rounds.setdefault(key, []).append(wrk(server, method, users, token, seconds, conns))
    for key, runs in rounds.items():
        results[key] = {
            **{
                figure: statistics.median(run[figure] for run in runs)
                for figure in ("rps", "p50_us", "p90_us", "p99_us", "server_cpu_us_per_request")
            },
            "client": runs[0]["client"],
            "rounds": runs,
        }
    for method in ("get", "put"):
        service_runs, ceiling_runs = (
            rounds[f"service_{method}_max"],
            rounds[f"ceiling_{method}_max"],
        )
        results[f"{method}_rps_ratio_per_round"] = [
            ratio(mine["rps"], base["rps"])
            for mine, base in zip(service_runs, ceiling_runs, strict=True)
        ]

    rate = round(results["service_get_max"]["rps"] * 0.5)
    for server in (ceiling, keyvault):
        print(f"bench: open loop GET {server.name} at {rate}/s", flush=True)
        results[f"{server.name}_get_half"] = open_loop(
            server, "rate", token, "--users", str(users), "--rate", str(rate),
            "--duration", str(seconds * 2),
        )  # fmt: skip
    results["service_peak_rss_mb"] = peak_rss_mb(keyvault.pid)

    print(
        "bench: restarting the service; each user's first read, then at once its second", flush=True
    )
    stop(keyvault)
    start(keyvault, workdir)
    results["service_restart_reads"] = open_loop(
        keyvault, "each-twice", token, "--users", str(users)
    )
    results["service_peak_rss_mb_after_restart"] = peak_rss_mb(keyvault.pid)
    for server in (ceiling, keyvault):
        stop(server)  # CPU 0 to the rotation alone
    print(f"bench: rotation rewrap of {ROTATION_RECORDS} records", flush=True)
    results["rotation"] = measure_rotation(state, workdir)
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    def row(name: str, key: str, ceiling_key: str) -> dict[str, Any]:
        mine, base = results[key], results[ceiling_key]
        rps = mine.get("rps", mine.get("achieved_rate"))
        base_rps = base.get("rps", base.get("achieved_rate"))
        return {
            "measure": name,
            "rps": round(rps),
            "p50_ms": round(mine["p50_us"] / 1000, 2),
            "p99_ms": round(mine["p99_us"] / 1000, 2),
            "ceiling_rps": round(base_rps),
            "ceiling_p50_ms": round(base["p50_us"] / 1000, 2),
            "ceiling_p99_ms": round(base["p99_us"] / 1000, 2),
            "cpu_us": round(mine["server_cpu_us_per_request"]),
            "ceiling_cpu_us": round(base["server_cpu_us_per_request"]),
            # Closed loop: the median of the per-round ratios, each round measuring both apps
            # back to back; open loop: one run each.
            "rps_ratio": _median_ratio(mine, base, "rps")
            if "rounds" in mine
            else ratio(rps, base_rps),
            # What the rps ratio would be on a core of its own: CPU per request, inverted.
            "cpu_ratio": (
                round(1 / _median_ratio(mine, base, "server_cpu_us_per_request"), 3)
                if "rounds" in mine
                else ratio(base["server_cpu_us_per_request"], mine["server_cpu_us_per_request"])
            ),
            "p99_ratio": ratio(mine["p99_us"], base["p99_us"]),
            "failed": sum(run.get("failed", 0) for run in mine.get("rounds", [mine])),
            "requests": sum(run["requests"] for run in mine.get("rounds", [mine])),
        }

    rows = [
        row("GET max (wrk, closed loop)", "service_get_max", "ceiling_get_max"),
        row("PUT max (wrk, closed loop)", "service_put_max", "ceiling_put_max"),
        row("GET at 50% (open loop)", "service_get_half", "ceiling_get_half"),
    ]
    first = results["service_restart_reads"]["first_read"]["median_us"]
    warm = results["service_restart_reads"]["second_read"]["median_us"]
    summary = {
        "get_rps_ratio": rows[0]["rps_ratio"],
        "get_p99_ratio_at_half_load": rows[2]["p99_ratio"],
        "put_rps_ratio": rows[1]["rps_ratio"],
        "first_read_median_ms": round(first / 1000, 3),
        "warm_read_median_ms": round(warm / 1000, 3),
        "first_over_warm": ratio(first, warm),
        "peak_rss_mb": round(results["service_peak_rss_mb"], 1),
        "rotation": results["rotation"],
    }
    targets = {
        "get_rps_ratio >= 0.75": summary["get_rps_ratio"] >= 0.75,
        "get_p99_ratio_at_half_load <= 1.5": summary["get_p99_ratio_at_half_load"] <= 1.5,
        "put_rps_ratio >= 0.6": summary["put_rps_ratio"] >= 0.6,
        "first_over_warm <= 1.2": summary["first_over_warm"] <= 1.2,
        "peak_rss_mb < 150": summary["peak_rss_mb"] < 150,
        f"rotation_records_per_s >= {ROTATION_TARGET_RECORDS_PER_S}": (
            results["rotation"]["rewrap_records_per_s"] >= ROTATION_TARGET_RECORDS_PER_S
        ),
    }
    header = (
        f"{'':28} {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} {'cpu µs':>7} | {'ceiling':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'cpu µs':>7} | {'rps x':>6} {'p99 x':>6} {'cpu x':>6}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['measure']:28} {r['rps']:>7} {r['p50_ms']:>7} {r['p99_ms']:>7} {r['cpu_us']:>7} | "
            f"{r['ceiling_rps']:>7} {r['ceiling_p50_ms']:>7} {r['ceiling_p99_ms']:>7} "
            f"{r['ceiling_cpu_us']:>7} | {r['rps_ratio']:>6} {r['p99_ratio']:>6} {r['cpu_ratio']:>6}"
        )
    print()
    print(
        f"first read after restart: median {summary['first_read_median_ms']} ms, warm "
        f"{summary['warm_read_median_ms']} ms ({summary['first_over_warm']}x)"
    )
    print(
        "GET / PUT requests/s ratio per round: "
        f"{results['get_rps_ratio_per_round']} / {results['put_rps_ratio_per_round']}"
    )
    print(f"machine load average (1/5/15 min) at the end: {os.getloadavg()}")
    print(f"service worker peak RSS (VmHWM): {summary['peak_rss_mb']} MB with {args.users} users")
    rotation = results["rotation"]
    print(
        f"rotation rewrap of {rotation['records']:,} records (median of {rotation['runs']} runs): "
        f"{rotation['rewrap_records_per_s']:,} records/s; one plain UPDATE of the same rows "
        f"{rotation['baseline_rows_per_s']:,} rows/s ({rotation['rewrap_over_baseline']}x)"
    )
    print("load generators: wrk (closed loop, Lua script bench/load.lua); "
          "bench/open_loop.py (open loop, fixed rate)")  # fmt: skip
    for target, met in targets.items():
        print(f"  [{'met' if met else 'MISSED'}] {target}")
    for r in rows:
        if r["failed"] > r["requests"] / 100:
            print(f"  [INVALID] {r['measure']}: {r['failed']} of {r['requests']} requests failed")
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            # Other work on the machine inflates every figure; the ratios are what compare.
            "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        },
        "settings": {
            "users": args.users,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "server_cpu": SERVER_CPU,
            "load_cpu": LOAD_CPU,
        },
        "git": _git_describe(),
        "rows": rows,
        "summary": summary,
        "targets": targets,
        "raw": results,
    }


def _median_ratio(mine: dict[str, Any], base: dict[str, Any], figure: str) -> float:
    pairs = zip(mine["rounds"], base["rounds"], strict=True)
    return round(statistics.median(ratio(one[figure], other[figure]) for one, other in pairs), 3)


def _cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _git_describe() -> str:
    with suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description="keyvault against a bare FastAPI+asyncpg ceiling")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="closed-loop rounds per app")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per app")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    args = parser.parse_args()
    check_machine()
    state = Run()
    with stopped_on_signals(), tempfile.TemporaryDirectory(prefix="keyvault-bench-") as tmp:
        workdir = Path(tmp)
        try:
            document = report(run(args, state, workdir), args)
        except subprocess.CalledProcessError as error:
            sys.exit(
                f"bench: {error.cmd[3:5]} failed ({error.returncode}): {error.stdout}{error.stderr}"
            )
        finally:
            for server in state.servers:
                stop(server)
            for database in state.databases:
                asyncio.run(drop_database(database))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (args.out / f"bench-{stamp}.json", args.out / "latest.json"):
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out / f'bench-{stamp}.json'}")


if __name__ == "__main__":
    main()
