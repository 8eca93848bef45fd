"""`keyvault audit verify` against a real database edited behind the service's back with raw SQL."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.audit_support import PrivateService, execute_sql, private_service
from tests.conftest import AUDIENCE, ISSUER, JWT_SECRET, MASTER_KEY, bearer, key_path, mint

ALL = "api-key:read api-key:write api-key:delete"
SUB = "auth0|verify-me"
EVENTS = 4


@pytest.fixture
async def service(backend: str, tmp_path: Path) -> AsyncIterator[PrivateService]:
    async with private_service(backend, tmp_path) as running:
        headers = bearer(mint(SUB, ALL))
        await running.client.put(
            key_path(SUB), json={"api_key": "sk-0123456789abc"}, headers=headers
        )
        await running.client.get(key_path(SUB), headers=headers)
        await running.client.get(key_path(SUB, "/status"), headers=headers)
        await running.client.get(key_path(SUB))
        yield running


async def _verify(database_url: str, cwd: Path) -> tuple[int, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "MASTER_ENCRYPTION_KEY": MASTER_KEY,
        "KEYVAULT_DATABASE_URL": database_url,
        "KEYVAULT_JWT_SECRET": JWT_SECRET,
        "KEYVAULT_JWT_ISSUER": ISSUER,
        "KEYVAULT_JWT_AUDIENCE": AUDIENCE,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "keyvault",
        "audit",
        "verify",
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, (stdout + stderr).decode()


async def test_an_untouched_chain_verifies(service: PrivateService, tmp_path: Path) -> None:
    code, output = await _verify(service.database_url, tmp_path)
    assert code == 0, output
    assert f"{EVENTS} events verified" in output


async def test_an_edited_event_is_reported_by_number(
    service: PrivateService, tmp_path: Path
) -> None:
    await execute_sql(
        service.database_url, "UPDATE audit_events SET actor = 'nobody' WHERE seq = 2"
    )
    code, output = await _verify(service.database_url, tmp_path)
    assert code == 1
    assert "broken at event 2" in output
    assert "edited" in output


async def test_a_deleted_event_is_reported_by_number(
    service: PrivateService, tmp_path: Path
) -> None:
    await execute_sql(service.database_url, "DELETE FROM audit_events WHERE seq = 2")
    code, output = await _verify(service.database_url, tmp_path)
    assert code == 1
    assert "broken at event 2" in output
    assert "removed" in output


async def test_an_inserted_event_is_reported_by_number(
    service: PrivateService, tmp_path: Path
) -> None:
    # A copy of a genuine event, renumbered onto the end of the chain, head moved along with it.
    await execute_sql(
        service.database_url,
        "INSERT INTO audit_events (seq, occurred_at, actor, client_id, action, target, outcome,"
        " key_version, request_id, client_address, user_agent, key_id, link)"
        " SELECT 5, occurred_at, actor, client_id, action, target, outcome, key_version,"
        " request_id, client_address, user_agent, key_id, link FROM audit_events WHERE seq = 2",
    )
    await execute_sql(
        service.database_url,
        "UPDATE audit_head SET seq = 5, link = (SELECT link FROM audit_events WHERE seq = 5)",
    )
    code, output = await _verify(service.database_url, tmp_path)
    assert code == 1
    assert "broken at event 5" in output


async def test_a_cut_tail_is_reported(service: PrivateService, tmp_path: Path) -> None:
    await execute_sql(service.database_url, "DELETE FROM audit_events WHERE seq >= 3")
    code, output = await _verify(service.database_url, tmp_path)
    assert code == 1
    assert "events 3..4 were removed from the end" in output


async def test_a_cut_tail_with_the_head_moved_back_is_reported(
    service: PrivateService, tmp_path: Path
) -> None:
    await execute_sql(service.database_url, "DELETE FROM audit_events WHERE seq >= 3")
    await execute_sql(
        service.database_url,
        "UPDATE audit_head SET seq = 2, link = (SELECT link FROM audit_events WHERE seq = 2)",
    )
    code, output = await _verify(service.database_url, tmp_path)
    assert code == 1
    assert "head was rewritten" in output
