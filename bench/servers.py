"""Starting and stopping the benchmark's apps: each a uvicorn process pinned to the server CPU,
its environment and settings, its peak memory and CPU time, and the checks and signal handling
that make sure everything started is stopped."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
from sqlalchemy.engine import make_url

from bench.database import (
    ADMIN_URL,
)
from keyvault.config import Settings

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER_CPU = "0"
LOAD_CPU = "1"
HOST = "127.0.0.1"
STARTUP_DEADLINE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 10.0


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@dataclass
class Run:
    """Everything started, so that everything is stopped."""

    servers: list[Server] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def start(server: Server, workdir: Path, cpu: str = SERVER_CPU) -> None:
    server.log = workdir / f"{server.name}.log"
    with server.log.open("ab") as log:
        server.process = subprocess.Popen(
            ["taskset", "-c", cpu, *server.argv],
            env=server.env,
            cwd=workdir,  # no developer's .env is read from here
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
        )
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"{server.name} exited at start:\n" + "\n".join(tail))
        with suppress(httpx.HTTPError):
            if httpx.get(f"http://{HOST}:{server.port}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer /healthz within {STARTUP_DEADLINE_SECONDS}s")


def stop(server: Server) -> None:
    process = server.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used: per request, a figure other load cannot inflate."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def stopped_on_signals() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop servers and drop the database."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_machine() -> None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)} (apt-get install -y wrk util-linux)")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench: needs two CPUs (server on CPU 0, load generator on CPU 1)")


def service_environment(database: str) -> dict[str, str]:
    """`keyvault serve`'s environment over the throw-away `database`: fresh secrets, none of the
    caller's own KEYVAULT_ settings."""
    database_url = make_url(ADMIN_URL).set(drivername="postgresql+asyncpg", database=database)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEYVAULT_")},
        "MASTER_ENCRYPTION_KEY": secrets.token_urlsafe(32),
        "KEYVAULT_JWT_SECRET": secrets.token_urlsafe(48),
        "KEYVAULT_DATABASE_URL": database_url.render_as_string(hide_password=False),
        # One token from one address drives all the load: a budget it can never exhaust keeps the
        # limiter's cost in the figures without turning the run into a stream of 429s.
        "KEYVAULT_RATE_LIMIT": "1000000/second",
        # The token is a service token (users:any), which draws on the service budget instead.
        "KEYVAULT_RATE_LIMIT_SERVICE": "1000000/second",
    }
    env.pop("MASTER_ENCRYPTION_KEY_FILE", None)
    return env


def settings_of(env: dict[str, str]) -> Settings:
    """The Settings a service started with `env` has, for seeding and minting its tokens here."""
    return Settings(
        _env_file=None,
        MASTER_ENCRYPTION_KEY=env["MASTER_ENCRYPTION_KEY"],
        jwt_secret=env["KEYVAULT_JWT_SECRET"],
        database_url=env["KEYVAULT_DATABASE_URL"],
    )
