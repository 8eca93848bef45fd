from __future__ import annotations

import logging

import httpx
import pytest

from tests.conftest import bearer, key_path, mint

ALL = "api-key:read api-key:write api-key:delete"
SUB = "google-oauth2|telemetry-4711"


def request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "keyvault.access"]


async def test_each_request_logs_one_line_with_route_status_duration_and_actor(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyvault.access")

    response = await client.put(
        key_path(SUB), json={"api_key": "sk-telemetry-0123456789"}, headers=bearer(mint(SUB, ALL))
    )

    [line] = request_lines(caplog)
    assert line.levelno == logging.INFO
    assert line.__dict__["event"] == "request"
    assert line.__dict__["route"] == "/users/{sub}/api-key"
    assert line.__dict__["method"] == "PUT"
    assert line.__dict__["status"] == response.status_code == 201
    assert line.__dict__["duration_ms"] >= 0
    assert line.__dict__["actor"] == SUB
    assert line.__dict__["request_id"] == response.headers["x-request-id"]
    assert SUB not in line.getMessage()


async def test_a_request_without_a_valid_token_has_no_actor(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyvault.access")

    await client.get(key_path(SUB), headers=bearer("not-a-token"))

    [line] = request_lines(caplog)
    assert line.__dict__["status"] == 401
    assert "actor" not in line.__dict__


async def test_a_body_refused_before_routing_is_logged_as_unmatched(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyvault.access")

    await client.put(
        key_path(SUB),
        content=b"{" + b" " * 20_000 + b"}",
        headers=bearer(mint(SUB, ALL)) | {"Content-Type": "application/json"},
    )

    [line] = request_lines(caplog)
    assert line.__dict__["status"] == 413
    assert line.__dict__["route"] == "<unmatched>"


async def test_probe_successes_are_logged_at_debug_only(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="keyvault.access")

    await client.get("/healthz")
    await client.get("/readyz")

    assert [line.levelno for line in request_lines(caplog)] == [logging.DEBUG] * 2


async def test_invented_methods_share_one_label(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyvault.access")

    await client.request("BREW", "/healthz")

    [line] = request_lines(caplog)
    assert line.__dict__["method"] == "OTHER"
