"""Recording under concurrency: one unbroken chain, and reads sharing transactions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from keyvault.audit import repository as audit_repository
from keyvault.db.engine import create_engine
from tests.audit_support import another_instance, private_service, stored_events, verify
from tests.conftest import bearer, key_path, mint

ALL = "api-key:read api-key:write api-key:delete"


@pytest.fixture
def head_claims() -> Iterator[list[str]]:
    """Every statement that claims sequence numbers from the chain head, on any engine."""
    claims: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "audit_head SET seq" in statement:
            claims.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    yield claims
    event.remove(Engine, "before_cursor_execute", count)


PATIENT_DATABASE: dict[str, Any] = {
    "database_connect_timeout": 10,
    "database_statement_timeout": 10,
    "database_pool_timeout": 10,
}


def _requests(client: httpx.AsyncClient, worker: int) -> list[Any]:
    calls = []
    for number in range(6):
        sub = f"user-{number}"
        headers = bearer(mint(sub, ALL))
        calls += [
            client.put(
                key_path(sub), json={"api_key": f"sk-{worker}-{number}-0123456789"}, headers=headers
            ),
            client.get(key_path(sub), headers=headers),
            client.get(key_path(sub, "/status"), headers=headers),
            client.get(key_path(sub), headers=bearer(mint("intruder", ALL))),
            client.delete(key_path(sub), headers=headers),
        ]
    return calls


async def test_concurrent_requests_on_two_workers_keep_one_unbroken_chain(
    backend: str, tmp_path: Path
) -> None:
    # Both apps share this process's one event loop, so 60 requests at once can keep a statement
    # waiting past the default 0.4 s bounds on a busy machine: this test is about the chain.
    async with (
        private_service(backend, tmp_path, **PATIENT_DATABASE) as service,
        another_instance(service, **PATIENT_DATABASE) as second,
    ):
        calls = _requests(service.client, 1) + _requests(second, 2)
        responses = await asyncio.gather(*calls)
        assert all(response.status_code != 503 for response in responses)
        result = await verify(service.database_url, service.keyring)
        assert result.intact, result.problem
        assert result.events_checked == len(calls)
        seqs = [stored.seq for stored in await stored_events(service.database_url)]
        assert seqs == list(range(1, len(calls) + 1))


async def test_concurrent_reads_share_their_audit_transactions(
    backend: str, tmp_path: Path, head_claims: list[str]
) -> None:
    async with private_service(backend, tmp_path) as service:
        headers = bearer(mint("reader", ALL))
        await service.client.put(
            key_path("reader"), json={"api_key": "sk-0123456789abc"}, headers=headers
        )
        head_claims.clear()
        # Fewer reads than the request pool holds (15): this is about group commit, not about the
        # 0.5 s pool wait, which on a loaded machine sheds a 40-request burst with 503s.
        reads = 12
        responses = await asyncio.gather(
            *(service.client.get(key_path("reader"), headers=headers) for _ in range(reads))
        )
        assert all(response.status_code == 200 for response in responses)
        assert len(await stored_events(service.database_url, "reader")) == reads + 1
        assert 1 <= len(head_claims) < reads


async def test_the_chain_is_walked_a_chunk_at_a_time(backend: str, tmp_path: Path) -> None:
    async with private_service(backend, tmp_path) as service:
        headers = bearer(mint("walker", ALL))
        for _ in range(5):
            await service.client.get(key_path("walker", "/status"), headers=headers)
        engine = create_engine(service.database_url)
        try:
            async with engine.connect() as connection:
                seqs = [stored.seq async for stored in audit_repository.walk(connection, chunk=2)]
        finally:
            await engine.dispose()
        assert seqs == [1, 2, 3, 4, 5]
