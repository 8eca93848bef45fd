"""What the outage tests share: a private Postgres cluster of their own to stop and freeze, the
requests they send during an outage, and how a quick 503 and a recovery are checked."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from keyvault.web.app import KeyvaultApp
from tests.conftest import bearer, key_path, mint

ALL = "api-key:read api-key:write api-key:delete"
OUTAGE_ANSWER_SECONDS = 1.0
# A request that waited for the database instead of giving up would take as long as the freeze; the
# tests freeze it for longer than this and count such a wait as a failure.
FREEZE_SECONDS = 5.0
# A request queued behind a batch that met the outage is answered with that batch, not after one of
# its own (which would take another timeout); this is the room left for scheduling.
QUEUED_MARGIN_SECONDS = 0.1
STORED_KEY = "sk-outage-survivor-0123456789"


def postgres_bin() -> Path | None:
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = versions[0] if versions else shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivatePostgres:
    """A throw-away cluster on a random port, run as `postgres` when we are root (initdb refuses root)."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=check, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def freeze(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Frozen inside the block; thawed when it ends, however it ends."""
        try:
            self.freeze()
            yield
        finally:
            self.thaw()

    def _processes(self) -> list[int]:
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]


REQUESTS = [
    ("GET", key_path("alice"), None),
    ("GET", key_path("alice", "/status"), None),
    ("PUT", key_path("alice"), {"api_key": "sk-written-during-outage-0000"}),
    ("DELETE", key_path("alice"), None),
    ("GET", "/readyz", None),
]


async def assert_every_request_is_a_quick_503(client: httpx.AsyncClient) -> None:
    headers = bearer(mint("alice", ALL))
    for method, path, body in REQUESTS:
        started = time.monotonic()
        response = await client.request(method, path, json=body, headers=headers)
        elapsed = time.monotonic() - started

        assert response.status_code == 503, (method, path, response.text)
        assert elapsed < OUTAGE_ANSWER_SECONDS, (method, path, elapsed)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert response.json()["type"].endswith("/database-unavailable")
        assert "Traceback" not in response.text


def assert_quick_503(response: httpx.Response, elapsed: float, what: str) -> None:
    # The documented figure is under a second; the margin is for a loaded test machine, while a
    # request that waited for the freeze would take FREEZE_SECONDS.
    assert response.status_code == 503, (what, response.text)
    assert elapsed < OUTAGE_ANSWER_SECONDS * 1.5, (what, elapsed)
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert "Traceback" not in response.text


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    """The response and how long it took; a request still waiting after FREEZE_SECONDS fails."""
    started = time.monotonic()
    try:
        response = await asyncio.wait_for(request, FREEZE_SECONDS)
    except TimeoutError:
        pytest.fail(f"no answer within {FREEZE_SECONDS} s: the request waited for the database")
    return response, time.monotonic() - started


async def assert_serving_again(client: httpx.AsyncClient) -> None:
    headers = bearer(mint("alice", ALL))
    read = await client.get(key_path("alice"), headers=headers)
    assert read.status_code == 200
    assert read.json()["api_key"] == STORED_KEY
    assert (await client.get("/readyz")).status_code == 200
    written = await client.put(
        key_path("alice"), json={"api_key": "sk-written-after-outage-0000"}, headers=headers
    )
    assert written.status_code == 200


@dataclass
class Served:
    app: KeyvaultApp
    http: httpx.AsyncClient
