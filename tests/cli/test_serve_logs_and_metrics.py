"""The real `keyvault serve` process: its JSON logs hold no secret, and its workers share metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import JWT_SECRET, MASTER_KEY, bearer, key_path, mint
from tests.prometheus import sample
from tests.real_server import (
    free_port,
    migrate,
    server_environment,
    serving,
    stop,
    wait_until_live,
)

pytestmark = pytest.mark.server

CANARY_KEY = "sk-CANARY-logs-7d1e0123456789abcdef"
CANARY_SUB = "google-oauth2|canary-5150"
ALL = "api-key:read api-key:write api-key:delete"
REQUEST_ID = "canary-request-id-0042"


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'keyvault.db'}"


def make_every_kind_of_request(base_url: str, token_value: str) -> dict[str, int]:
    """One of each answer the API gives, every one carrying the canary key or token."""
    path = key_path(CANARY_SUB)
    own = bearer(token_value)
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=base_url, timeout=10) as http:

        def record(name: str, response: httpx.Response) -> None:
            assert CANARY_KEY not in response.text or name == "read"
            statuses[name] = response.status_code

        created = http.put(
            path, json={"api_key": CANARY_KEY}, headers=own | {"X-Request-ID": REQUEST_ID}
        )
        record("create", created)
        record("replace", http.put(path, json={"api_key": CANARY_KEY}, headers=own))
        record("read", http.get(path, headers=own))
        record("status", http.get(key_path(CANARY_SUB, "/status"), headers=own))
        record(
            "stale_etag",
            http.put(path, json={"api_key": CANARY_KEY}, headers=own | {"If-Match": '"1.0"'}),
        )
        record(
            "invalid_key",
            http.put(path, json={"api_key": f"{CANARY_KEY} {CANARY_KEY}"}, headers=own),
        )
        record(
            "malformed_json",
            http.put(
                path,
                content=f'{{"api_key": "{CANARY_KEY}"'.encode(),
                headers=own | {"Content-Type": "application/json"},
            ),
        )
        record(
            "too_large",
            http.put(path, json={"api_key": CANARY_KEY * 1000}, headers=own),
        )
        record("bad_token", http.get(path, headers=bearer(token_value[:-4] + "AAAA")))
        record("no_scope", http.get(path, headers=bearer(mint(CANARY_SUB, "api-key:write"))))
        record("delete", http.delete(path, headers=own))
        record("gone", http.get(path, headers=own))
    return statuses


def test_real_server_logs_one_json_line_per_request_and_never_a_secret(tmp_path: Path) -> None:
    token_value = mint(CANARY_SUB, ALL)
    env = server_environment(sqlite_url(tmp_path), KEYVAULT_LOG_LEVEL="DEBUG")
    with serving(tmp_path, env) as server:
        statuses = make_every_kind_of_request(server.base_url, token_value)
    output = server.output()

    assert statuses == {
        "create": 201,
        "replace": 200,
        "read": 200,
        "status": 200,
        "stale_etag": 412,
        "invalid_key": 422,
        "malformed_json": 422,
        "too_large": 413,
        "bad_token": 401,
        "no_scope": 403,
        "delete": 204,
        "gone": 404,
    }
    for secret in (CANARY_KEY, token_value, token_value.split(".")[2], MASTER_KEY, JWT_SECRET):
        assert secret not in output
    assert server.stderr.read_text() == ""
    lines = json_lines(server.stdout.read_text())
    requests = [line for line in lines if line.get("event") == "request"]
    assert sorted(line["status"] for line in requests if line["route"] != "/healthz") == sorted(
        statuses.values()
    )
    for line in requests:
        assert {"time", "level", "request_id", "route", "method", "status", "duration_ms"} <= set(
            line
        )
        assert "canary-5150" not in line["route"]
    first = next(line for line in requests if line["request_id"] == REQUEST_ID)
    assert first["route"] == "/users/{sub}/api-key"
    assert first["method"] == "PUT"
    assert first["actor"] == CANARY_SUB
    events = {line.get("event") for line in lines}
    assert {"master_key_verified", "startup", "shutdown"} <= events


def test_workers_report_one_sum_of_their_metrics(tmp_path: Path) -> None:
    env = server_environment(sqlite_url(tmp_path))
    labels = {"route": "/healthz", "method": "GET", "status": "200"}
    no_keep_alive = httpx.Limits(max_keepalive_connections=0)
    with (
        serving(tmp_path, env, "--workers", "2") as server,
        httpx.Client(base_url=server.base_url, timeout=10, limits=no_keep_alive) as http,
    ):
        before = sample(http.get("/metrics").text, "keyvault_http_requests_total", **labels)
        for _ in range(40):
            assert http.get("/healthz").status_code == 200
        http.put(
            key_path("alice"),
            json={"api_key": "sk-worker-0123456789ab"},
            headers=bearer(mint("alice", ALL)),
        )
        scrapes = [http.get("/metrics").text for _ in range(6)]

    counts = {sample(text, "keyvault_http_requests_total", **labels) for text in scrapes}
    assert counts == {before + 40}
    put = {"route": "/users/{sub}/api-key", "method": "PUT", "status": "201"}
    assert {sample(text, "keyvault_http_requests_total", **put) for text in scrapes} == {1}


def test_workers_sharing_a_pipe_never_split_a_line(tmp_path: Path) -> None:
    # Where a container runtime collects stdout: one pipe for every worker. Each worker writes
    # whole lines of at most PIPE_BUF bytes per write, so lines arrive whole, never interleaved.
    env = server_environment(sqlite_url(tmp_path))
    migrate(tmp_path, env)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "keyvault", "serve", "--port", str(port), "--workers", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(process.stdout or []), daemon=True)
    reader.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(base_url, process)

        def refused_reads(_: int) -> None:
            no_keep_alive = httpx.Limits(max_keepalive_connections=0)
            with httpx.Client(base_url=base_url, timeout=10, limits=no_keep_alive) as http:
                for _ in range(40):
                    assert http.get(key_path(CANARY_SUB)).status_code == 401

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(refused_reads, range(8)))
    finally:
        stop(process)
        reader.join(timeout=10)
        process.stdout.close()

    lines = [json.loads(line) for line in received if line.strip()]
    refusals = [line for line in lines if line.get("event") == "request" and line["status"] == 401]
    assert len(refusals) == 320
