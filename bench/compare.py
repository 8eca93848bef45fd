"""CPU per request of keyvault at two or more git revisions, side by side in one run.

    .venv/bin/python -m bench.compare HEAD~1 HEAD            # GET, 8 rounds of 4 s
    .venv/bin/python -m bench.compare main WORKTREE --method PUT --rounds 10

How a change to the read or write path is measured: make bench compares keyvault with a ceiling, and
run-to-run noise on a shared machine hides a change of a few percent. Here every revision serves the
same seeded database at once, each from its own copy of the source (`git archive`; WORKTREE is the
checkout as it is, uncommitted changes included), one worker pinned to CPU 0; wrk on CPU 1 drives
them in alternating rounds, so that whatever else the machine does weighs on all alike. Each round's
figure is the server's CPU time per request (from /proc); the report gives each revision's median
and its ratio to the first revision's. The revisions must share the database schema (each `keyvault
serve` checks it is at its own head).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bench import database as bench_database
from bench import phases as bench_phases
from bench import servers as bench_servers
from keyvault.auth.tokens import mint_token

WORKTREE = "WORKTREE"


def source_tree(revision: str, into: Path) -> Path:
    """The `src/` of `revision`, and the alembic/ beside it where migrations were not yet inside it."""
    if revision == WORKTREE:
        return bench_servers.REPO / "src"
    into.mkdir(parents=True)
    has_alembic_folder = (
        subprocess.run(
            ["git", "-C", str(bench_servers.REPO), "cat-file", "-e", f"{revision}:alembic"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    paths = ["src", "alembic"] if has_alembic_folder else ["src"]
    archive = subprocess.run(
        ["git", "-C", str(bench_servers.REPO), "archive", revision, *paths],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def compare(args: argparse.Namespace, state: bench_servers.Run, workdir: Path) -> None:
    name = f"keyvault_compare_{uuid.uuid4().hex[:10]}"
    asyncio.run(bench_database.create_database(name))
    state.databases.append(name)
    env = bench_servers.service_environment(name)
    trees = [source_tree(rev, workdir / f"tree-{n}") for n, rev in enumerate(args.revisions)]
    print(f"compare: database {name}; migrating and seeding {args.users} users", flush=True)
    subprocess.run(
        [sys.executable, "-m", "keyvault", "migrate"],
        env={**env, "PYTHONPATH": str(trees[0])},
        cwd=workdir,
        check=True,
        timeout=300,
    )
    settings = bench_servers.settings_of(env)
    asyncio.run(bench_database.seed(settings, args.users))
    token = mint_token(settings, "bench-caller", "api-key:read api-key:write users:any", 3600)

    servers = []
    for n, (revision, tree) in enumerate(zip(args.revisions, trees, strict=True)):
        port = bench_servers.free_port()
        argv = [
            sys.executable,
            "-m",
            "keyvault",
            "serve",
            "--host",
            bench_servers.HOST,
            "--port",
            str(port),
        ]
        server = bench_servers.Server(
            f"{n}-{revision}", argv, {**env, "PYTHONPATH": str(tree)}, port
        )
        state.servers.append(server)
        bench_servers.start(server, workdir)
        servers.append(server)

    cpu: dict[str, list[float]] = {server.name: [] for server in servers}
    rps: dict[str, list[float]] = {server.name: [] for server in servers}
    for server in servers:
        bench_phases.wrk(server, args.method, args.users, token, args.seconds, args.connections)
    for round_number in range(1, args.rounds + 1):
        print(f"compare: round {round_number} of {args.rounds}", flush=True)
        for server in servers:
            result = bench_phases.wrk(
                server, args.method, args.users, token, args.seconds, args.connections
            )
            cpu[server.name].append(result["server_cpu_us_per_request"])
            rps[server.name].append(result["rps"])

    baseline = statistics.median(cpu[servers[0].name])
    print(f"\n{args.method}, {args.rounds} rounds of {args.seconds} s, wrk -c{args.connections}")
    for server in servers:
        median = statistics.median(cpu[server.name])
        rounds = ", ".join(f"{value:.0f}" for value in cpu[server.name])
        print(
            f"{server.name:24} cpu µs/request median {median:6.1f} ({median / baseline:.3f}x)"
            f"  req/s median {statistics.median(rps[server.name]):6.0f}  rounds: {rounds}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU per request of keyvault at git revisions")
    parser.add_argument("revisions", nargs="+", help=f"git revisions, or {WORKTREE}")
    parser.add_argument("--method", choices=("GET", "PUT"), default="GET")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=4, help="seconds per round and revision")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--users", type=int, default=2000)
    args = parser.parse_args()
    bench_servers.check_machine()
    state = bench_servers.Run()
    with (
        bench_servers.stopped_on_signals(),
        tempfile.TemporaryDirectory(prefix="keyvault-cmp-") as tmp,
    ):
        try:
            compare(args, state, Path(tmp))
        finally:
            for server in state.servers:
                bench_servers.stop(server)
            for database in state.databases:
                asyncio.run(bench_database.drop_database(database))


if __name__ == "__main__":
    main()
