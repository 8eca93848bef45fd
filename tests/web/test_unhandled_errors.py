"""An exception nothing handles: a 500 problem, and one error line that finds the code (its type
and frames) and names the route by its template, never by a path that holds the user's sub."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NoReturn

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from keyvault.keys import service
from keyvault.observability.logs import JsonFormatter
from tests.audit_support import private_service, stored_events
from tests.conftest import bearer, mint

CANARY_SUB = "canary-sub-7f3a9c"
CANARY_MESSAGE = "canary-message-0b1d"
SERVICE = "api-key:read users:any"


async def _internal_failure(*_args: object, **_kwargs: object) -> NoReturn:
    raise LookupError(f"no row for {CANARY_SUB}: {CANARY_MESSAGE}")


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    # Not the audit trail's lines: the failed request's audit event names its target by design.
    return [
        json.loads(formatter.format(record))
        for record in caplog.records
        if record.name != "keyvault.audit"
    ]


@pytest.mark.parametrize(
    ("route", "failing"),
    [("/users/{sub}/api-key", "get_api_key"), ("/users/{sub}/api-key/status", "get_status")],
    ids=["read", "status"],
)
async def test_an_unhandled_error_logs_type_frames_and_route_template_never_the_sub(
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    route: str,
    failing: str,
) -> None:
    caplog.set_level(logging.INFO, logger="keyvault")
    async with private_service(backend, tmp_path) as vault:
        monkeypatch.setattr(service, failing, _internal_failure)
        # A service token: its own sub is not the canary, so the canary can only come from the path.
        response = await vault.client.get(
            route.replace("{sub}", CANARY_SUB), headers=bearer(mint("billing", SERVICE))
        )

    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    lines = _lines(caplog)
    (error,) = [line for line in lines if line.get("event") == "unhandled_error"]
    assert error["level"] == "ERROR"
    assert error["exc_type"] == "LookupError"
    assert any("_internal_failure" in frame for frame in error["exc_frames"])
    assert error["route"] == route
    assert route in error["message"]
    (access,) = [line for line in lines if line.get("event") == "request"]
    assert access["route"] == route
    everything = json.dumps(lines)
    assert CANARY_SUB not in everything
    assert CANARY_MESSAGE not in everything


@pytest.mark.parametrize(
    ("method", "suffix", "failing", "action"),
    [
        ("GET", "", "get_api_key", "get"),
        ("PUT", "", "put_api_key_audited", "put"),
        ("DELETE", "", "delete_api_key", "delete"),
        ("GET", "/status", "get_status", "status"),
    ],
    ids=["read", "write", "delete", "status"],
)
async def test_an_unhandled_error_in_a_key_operation_leaves_one_error_event_and_a_500(
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    suffix: str,
    failing: str,
    action: str,
) -> None:
    async with private_service(backend, tmp_path) as vault:
        monkeypatch.setattr(service, failing, _internal_failure)
        before = len(await stored_events(vault.database_url))
        response = await vault.client.request(
            method,
            f"/users/{CANARY_SUB}/api-key{suffix}",
            headers=bearer(mint(CANARY_SUB, "api-key:read api-key:write api-key:delete")),
            json={"api_key": "sk-canary-0123456789"} if method == "PUT" else None,
        )
        events = (await stored_events(vault.database_url))[before:]

    assert response.status_code == 500
    assert response.json()["type"].endswith("/internal-error")
    assert [(e.event.action, e.event.outcome, e.event.actor) for e in events] == [
        (action, "error", CANARY_SUB)
    ]


async def _failing_commit(_session: AsyncSession) -> NoReturn:
    raise RuntimeError(f"commit failed for {CANARY_SUB}")


async def test_a_delete_whose_commit_fails_leaves_one_error_event_and_the_key(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = bearer(mint(CANARY_SUB, "api-key:read api-key:write api-key:delete"))
    async with private_service(backend, tmp_path) as vault:
        stored = await vault.client.put(
            f"/users/{CANARY_SUB}/api-key",
            json={"api_key": "sk-canary-0123456789"},
            headers=headers,
        )
        assert stored.status_code == 201
        before = len(await stored_events(vault.database_url))
        with monkeypatch.context() as patched:
            patched.setattr(AsyncSession, "commit", _failing_commit)
            response = await vault.client.delete(f"/users/{CANARY_SUB}/api-key", headers=headers)
        events = (await stored_events(vault.database_url))[before:]
        still_there = await vault.client.get(f"/users/{CANARY_SUB}/api-key", headers=headers)

    assert response.status_code == 500
    assert [(e.event.action, e.event.outcome) for e in events] == [("delete", "error")]
    assert still_there.status_code == 200
