"""`keyvault serve` as a real process on a free port, with its stdout and stderr kept for reading."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import AUDIENCE, ISSUER, JWT_SECRET, MASTER_KEY

STARTUP_DEADLINE_SECONDS = 60
SHUTDOWN_DEADLINE_SECONDS = 30


@dataclass
class RunningServer:
    base_url: str
    stdout: Path
    stderr: Path
    pid: int = 0

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_environment(database_url: str, **settings: str) -> dict[str, str]:
    """The test secrets and nothing from the developer's own KEYVAULT_* settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KEYVAULT_", "MASTER_ENCRYPTION", "PROMETHEUS_"))
    }
    return env | {
        "MASTER_ENCRYPTION_KEY": MASTER_KEY,
        "KEYVAULT_JWT_SECRET": JWT_SECRET,
        "KEYVAULT_JWT_ISSUER": ISSUER,
        "KEYVAULT_JWT_AUDIENCE": AUDIENCE,
        "KEYVAULT_DATABASE_URL": database_url,
        **settings,
    }


@contextmanager
def serving(workdir: Path, env: dict[str, str], *serve_args: str) -> Iterator[RunningServer]:
    """Migrate, start `keyvault serve`, wait for /healthz; SIGTERM and wait for exit afterwards."""
    migrate(workdir, env)
    port = free_port()
    server = RunningServer(
        f"http://127.0.0.1:{port}", workdir / "server.stdout", workdir / "server.stderr"
    )
    with server.stdout.open("w") as stdout, server.stderr.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "keyvault", "serve", "--port", str(port), *serve_args],
            cwd=workdir,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    server.pid = process.pid
    try:
        wait_until_live(server.base_url, process)
        yield server
    finally:
        stop(process)


def migrate(workdir: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "keyvault", "migrate"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        timeout=STARTUP_DEADLINE_SECONDS,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as an orchestrator stops it; killed if it has not exited by the deadline."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=SHUTDOWN_DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_live(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"keyvault serve exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("keyvault serve did not answer /healthz in time")
