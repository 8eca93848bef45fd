"""The real `keyvault serve` process on a free port, for tests that need a server, not an ASGI app."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import delete

from keyvault.crypto.records import MIN_KDF_ITERATIONS
from keyvault.db.engine import create_engine, create_sessionmaker, session_scope
from keyvault.db.models import ApiKeyRecord
from tests.conftest import AUDIENCE, ISSUER, JWT_SECRET, MASTER_KEY

STARTUP_SECONDS = 60
EXIT_SECONDS = 30
# The package under test, as this venv has it (editable, from src/).
KEYVAULT_HERE = (sys.executable, "-m", "keyvault")


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float = EXIT_SECONDS) -> int:
        return self.process.wait(timeout=timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(database_url: str) -> dict[str, str]:
    """The test settings as a server process gets them: from the environment alone."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KEYVAULT_", "MASTER_ENCRYPTION"))
    }
    return inherited | {
        "MASTER_ENCRYPTION_KEY": MASTER_KEY,
        "KEYVAULT_JWT_SECRET": JWT_SECRET,
        "KEYVAULT_JWT_ISSUER": ISSUER,
        "KEYVAULT_JWT_AUDIENCE": AUDIENCE,
        "KEYVAULT_DATABASE_URL": database_url,
        "KEYVAULT_KDF_ITERATIONS": str(MIN_KDF_ITERATIONS),
    }


@contextmanager
def running_server(
    database_url: str,
    workdir: Path,
    *serve_args: str,
    tls_ca: Path | None = None,
    keyvault: Sequence[str] = KEYVAULT_HERE,
    settings: Mapping[str, str] | None = None,
) -> Iterator[RunningServer]:
    """Start `keyvault serve`, wait until /healthz answers, and stop it (SIGTERM) afterwards.

    `keyvault` is the command that runs the CLI, e.g. the script of another installation;
    `settings` are environment variables added to the test ones (`KEYVAULT_JWKS_URL`, …).
    """
    port = free_port()
    scheme = "https" if tls_ca is not None else "http"
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*keyvault, "serve", "--port", str(port), *serve_args],
            cwd=workdir,
            env=server_env(database_url) | dict(settings or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(process, f"{scheme}://127.0.0.1:{port}", log_path)
    try:
        _wait_until_healthy(server, tls_ca)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def client_tls_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def _wait_until_healthy(server: RunningServer, tls_ca: Path | None) -> None:
    verify: ssl.SSLContext | bool = client_tls_context(tls_ca) if tls_ca is not None else True
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"keyvault serve exited early:\n{server.log()}")
        try:
            response = httpx.get(f"{server.base_url}/healthz", timeout=1, verify=verify)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling interval while the server starts, not a wait for an outcome
    raise AssertionError(
        f"keyvault serve did not answer within {STARTUP_SECONDS} s:\n{server.log()}"
    )


async def delete_record(database_url: str, sub: str) -> None:
    """Remove what a server test stored, so the shared test database is left as it was found."""
    engine = create_engine(database_url)
    try:
        async with session_scope(create_sessionmaker(engine)) as session:
            await session.execute(delete(ApiKeyRecord).where(ApiKeyRecord.sub == sub))
    finally:
        await engine.dispose()
