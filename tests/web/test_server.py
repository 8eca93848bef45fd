"""The real server process, started the way an operator starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import JWT_SECRET, MASTER_KEY, bearer, key_path, mint

CANARY_KEY = "sk-CANARY-server-0123456789abcdef"
STARTUP_DEADLINE_SECONDS = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KEYVAULT_", "MASTER_ENCRYPTION"))
    }
    env |= {
        "MASTER_ENCRYPTION_KEY": MASTER_KEY,
        "KEYVAULT_JWT_SECRET": JWT_SECRET,
        "KEYVAULT_JWT_ISSUER": "keyvault-tests",
        "KEYVAULT_DATABASE_URL": database_url,
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "keyvault", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(base_url, process)
        yield base_url, log_path
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _wait_until_healthy(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become healthy in time")


def test_real_server_stores_and_serves_a_key_and_logs_no_secret(server: tuple[str, Path]) -> None:
    base_url, log_path = server
    token_value = mint("google-oauth2|42", "api-key:read api-key:write api-key:delete")
    sub_path = key_path("google-oauth2|42")
    with httpx.Client(base_url=base_url, headers=bearer(token_value), timeout=10) as http:
        created = http.put(sub_path, json={"api_key": CANARY_KEY})
        read = http.get(sub_path)
        invalid = http.put(sub_path, json={"api_key": CANARY_KEY + " with space"})
        ready = http.get("/readyz")
        deleted = http.delete(sub_path)

    assert created.status_code == 201
    assert read.json()["api_key"] == CANARY_KEY
    assert read.headers["cache-control"] == "no-store"
    assert invalid.status_code == 422
    assert CANARY_KEY not in invalid.text
    assert ready.status_code == 200
    assert deleted.status_code == 204
    logs = log_path.read_text()
    for secret in (CANARY_KEY, token_value, MASTER_KEY, JWT_SECRET):
        assert secret not in logs


def test_real_server_refuses_a_line_break_or_invalid_utf8_in_the_sub_as_any_invalid_sub(
    server: tuple[str, Path],
) -> None:
    # The server's own path decoding, not the test transport's: %0A and %FF reach the app as
    # "\n" and U+FFFD.
    base_url, _ = server
    everything = "api-key:read api-key:write api-key:delete"
    with httpx.Client(base_url=base_url, timeout=10) as http:
        http.put(
            "/users/alice/api-key",
            json={"api_key": CANARY_KEY},
            headers=bearer(mint("alice", everything)),
        )
        answers = {
            "newline, no token": http.get("/users/a%0Ab/api-key"),
            "newline": http.get("/users/a%0Ab/api-key", headers=bearer(mint("a\nb", everything))),
            "invalid utf-8": http.put(
                "/users/x%FF/api-key",
                json={"api_key": CANARY_KEY},
                headers=bearer(mint("x\ufffd", everything)),
            ),
            "newline after the route": http.get(
                "/users/alice/api-key%0A", headers=bearer(mint("alice", everything))
            ),
        }
    assert {name: answer.status_code for name, answer in answers.items()} == {
        "newline, no token": 401,
        "newline": 422,
        "invalid utf-8": 422,
        "newline after the route": 404,
    }
    assert all(CANARY_KEY not in answer.text for answer in answers.values())
