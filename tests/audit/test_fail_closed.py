"""When the audit event cannot be stored, the operation fails with 503 and nothing changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.audit_support import PrivateService, execute_sql, private_service, verify
from tests.conftest import bearer, key_path, mint

ALL = "api-key:read api-key:write api-key:delete"
SUB = "google-oauth2|fail-closed"
FIRST_KEY = "sk-first-key-0000000000001111"
SECOND_KEY = "sk-CANARY-second-key-000002222"


@pytest.fixture
async def service(backend: str, tmp_path: Path) -> AsyncIterator[PrivateService]:
    async with private_service(backend, tmp_path) as running:
        response = await running.client.put(
            key_path(SUB), json={"api_key": FIRST_KEY}, headers=bearer(mint(SUB, ALL))
        )
        assert response.status_code == 201
        yield running


async def _break_audit_table(service: PrivateService) -> None:
    await execute_sql(service.database_url, "ALTER TABLE audit_events RENAME TO audit_events_gone")


async def _repair_audit_table(service: PrivateService) -> None:
    await execute_sql(service.database_url, "ALTER TABLE audit_events_gone RENAME TO audit_events")


async def _current_key(service: PrivateService) -> tuple[str, int]:
    response = await service.client.get(key_path(SUB), headers=bearer(mint(SUB, ALL)))
    assert response.status_code == 200
    body = response.json()
    return body["api_key"], body["version"]


async def test_put_is_refused_with_503_and_the_key_is_unchanged(service: PrivateService) -> None:
    await _break_audit_table(service)
    response = await service.client.put(
        key_path(SUB), json={"api_key": SECOND_KEY}, headers=bearer(mint(SUB, ALL))
    )
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/audit-unavailable")
    assert "CANARY" not in response.text
    await _repair_audit_table(service)
    assert await _current_key(service) == (FIRST_KEY, 1)


async def test_read_is_refused_with_503_and_returns_no_key(service: PrivateService) -> None:
    await _break_audit_table(service)
    response = await service.client.get(key_path(SUB), headers=bearer(mint(SUB, ALL)))
    assert response.status_code == 503
    assert FIRST_KEY not in response.text
    assert "api_key" not in response.json()


async def test_delete_is_refused_with_503_and_the_key_stays(service: PrivateService) -> None:
    await _break_audit_table(service)
    response = await service.client.delete(key_path(SUB), headers=bearer(mint(SUB, ALL)))
    assert response.status_code == 503
    await _repair_audit_table(service)
    assert await _current_key(service) == (FIRST_KEY, 1)


async def test_a_refusal_that_cannot_be_recorded_is_answered_with_503(
    service: PrivateService,
) -> None:
    await _break_audit_table(service)
    response = await service.client.get(key_path(SUB))
    assert response.status_code == 503


async def test_a_missing_chain_head_fails_closed(service: PrivateService) -> None:
    await execute_sql(service.database_url, "DELETE FROM audit_head")
    response = await service.client.put(
        key_path(SUB), json={"api_key": SECOND_KEY}, headers=bearer(mint(SUB, ALL))
    )
    assert response.status_code == 503
    read = await service.client.get(key_path(SUB), headers=bearer(mint(SUB, ALL)))
    assert read.status_code == 503


async def test_recording_resumes_and_the_chain_stays_whole_once_the_table_is_back(
    service: PrivateService,
) -> None:
    await _break_audit_table(service)
    for _ in range(2):
        await service.client.get(key_path(SUB), headers=bearer(mint(SUB, ALL)))
        await service.client.put(
            key_path(SUB), json={"api_key": SECOND_KEY}, headers=bearer(mint(SUB, ALL))
        )
    await _repair_audit_table(service)
    assert await _current_key(service) == (FIRST_KEY, 1)
    result = await verify(service.database_url, service.keyring)
    assert result.intact, result.problem
    assert result.events_checked == 2
