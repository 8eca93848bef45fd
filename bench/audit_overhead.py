"""What auditing every read costs: GET /users/{sub}/api-key with and without the audit trail,
against a bare FastAPI + asyncpg endpoint reading the same row, in the same run.

    .venv/bin/python -m bench.audit_overhead [--rounds 3] [--seconds 5] [--connections 32]

Needs Postgres (KEYVAULT_TEST_POSTGRES_URL or postgresql://root@127.0.0.1:5432/postgres) and `wrk`.
Creates a throw-away database, starts three single-worker servers on free ports, runs wrk against
each in turn (interleaved rounds, so drift hits all three alike), stops them and drops the database.
"audit off" is this branch with the read's audit call replaced by a no-op: it isolates the cost of
the audit insert (and its group commit) from everything else on the read path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
SUB = "bench-user"
MASTER_KEY = "bench-master-key-0123456789-abcdefghijklmnop"
JWT_SECRET = "bench-jwt-secret-0123456789-abcdefghijklmnop"
ADMIN_URL = os.environ.get(
    "KEYVAULT_TEST_POSTGRES_URL", "postgresql+asyncpg://root@127.0.0.1:5432/postgres"
)


# --- the servers (uvicorn factories) --------------------------------------------------------


def baseline_app() -> FastAPI:
    """The same row read with asyncpg and returned as JSON: no auth, no crypto, no audit."""
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(_asyncpg_dsn(os.environ["BENCH_DATABASE_URL"]))
        yield
        await state["pool"].close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/users/{sub:path}/api-key")
    async def read(sub: str) -> dict[str, Any]:
        row = await state["pool"].fetchrow(
            "SELECT sub, last4, version, created_at, updated_at FROM api_keys"
            " WHERE sub = $1 AND provider = 'openai'",
            sub,
        )
        return dict(row)

    return app


def keyvault_app() -> Any:
    from keyvault.web.app import create_app

    return create_app()


def keyvault_app_without_audit() -> Any:
    from keyvault.audit import trail as audit_trail
    from keyvault.web.app import create_app

    def not_recorded(self: audit_trail.RequestAudit, *, key_version: int | None) -> None:
        self.recorded = True

    audit_trail.RequestAudit.succeeded = not_recorded  # type: ignore[method-assign]
    return create_app()


# --- the harness ----------------------------------------------------------------------------


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _prepare(database_url: str) -> None:
    from keyvault.db.engine import create_engine, create_sessionmaker, session_scope
    from keyvault.db.migrations import upgrade_to_head
    from keyvault.keys import repository
    from keyvault.master_keys.unlock import unlock

    await asyncio.to_thread(upgrade_to_head, database_url)
    engine = create_engine(database_url)
    try:
        sessions = create_sessionmaker(engine)
        keyring = await unlock(sessions, MASTER_KEY, iterations_for_new=600_000)
        async with session_scope(sessions) as session:
            sealed = keyring.seal(SUB, "openai", "sk-bench-0123456789abcdef")
            record = repository.NewRecord(SUB, "openai", sealed, "cdef")
            await repository.upsert_record(session, record, datetime.now(UTC))
    finally:
        await engine.dispose()


def _start(factory: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-c",
        "import logging, uvicorn; logging.basicConfig(level=logging.INFO);"
        f" uvicorn.run({factory!r}, factory=True, host='127.0.0.1', port={port},"
        " access_log=False, log_config=None, app_dir=" + repr(str(ROOT / "tests" / "perf")) + ")",
    ]
    with log.open("ab") as sink:
        return subprocess.Popen(command, env=env, stdout=sink, stderr=sink, cwd=ROOT)


async def _wait_ready(url: str, headers: dict[str, str], deadline_seconds: float = 60) -> None:
    deadline = time.monotonic() + deadline_seconds
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url, headers=headers)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 in time")


def _wrk(url: str, token: str, seconds: int, connections: int) -> tuple[float, float]:
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"non-2xx answers from {url}:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", output)
    assert p50 is not None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return rate, float(p50.group(1)) * scale


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    name = f"keyvault_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_asyncpg_dsn(ADMIN_URL))
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    servers: list[subprocess.Popen[bytes]] = []
    results_dir = ROOT / "bench-results"
    results_dir.mkdir(exist_ok=True)
    try:
        await _prepare(database_url)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "src"),
            "BENCH_DATABASE_URL": database_url,
            "MASTER_ENCRYPTION_KEY": MASTER_KEY,
            "KEYVAULT_DATABASE_URL": database_url,
            "KEYVAULT_JWT_SECRET": JWT_SECRET,
        }
        from keyvault.auth.tokens import mint_token
        from keyvault.config import Settings

        token = mint_token(
            Settings(_env_file=None, jwt_secret=JWT_SECRET, database_url=database_url),
            SUB,
            "api-key:read",
            3600,
        )
        variants = {
            "bare FastAPI+asyncpg": "audit_overhead:baseline_app",
            "keyvault, audit off": "audit_overhead:keyvault_app_without_audit",
            "keyvault, audit on": "audit_overhead:keyvault_app",
        }
        urls = {}
        for label, factory in variants.items():
            port = _free_port()
            servers.append(_start(factory, port, env, results_dir / "audit_overhead.log"))
            urls[label] = f"http://127.0.0.1:{port}/users/{SUB}/api-key"
        for url in urls.values():
            await _wait_ready(url, {"Authorization": f"Bearer {token}"})
        rates: dict[str, list[float]] = {label: [] for label in variants}
        p50s: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(args.rounds):
            for label, url in urls.items():
                _wrk(url, token, 1, args.connections)  # warm-up
                rate, p50 = _wrk(url, token, args.seconds, args.connections)
                rates[label].append(rate)
                p50s[label].append(p50)
        baseline = statistics.median(rates["bare FastAPI+asyncpg"])
        pool = "pool as configured"
        print(
            f"GET, {args.rounds} rounds x {args.seconds}s, wrk -t1 -c{args.connections},"
            f" Postgres, keyvault {pool}"
        )
        for label in variants:
            median = statistics.median(rates[label])
            print(
                f"  {label:22s} median {median:8.0f} req/s  ({median / baseline:.2f}x bare)"
                f"  p50 latency {statistics.median(p50s[label]):6.2f} ms"
                f"  rounds: {', '.join(f'{rate:.0f}' for rate in rates[label])}"
            )
        with_audit = statistics.median(rates["keyvault, audit on"])
        without = statistics.median(rates["keyvault, audit off"])
        print(f"  audit on / audit off: {with_audit / without:.2f}")
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
