"""PUTs by group commit (keyvault.key_writes): concurrent PUTs share a transaction and one append
to the audit chain, and each still gets its own answer, its own version and its own event.

The KeyWrites-level tests gather their PUTs before the first batch starts (asyncio runs the
gathered tasks, each queueing its job, before the batch task it created), so they form one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from keyvault.audit.events import Action, AuditEvent, Outcome
from keyvault.db.engine import create_engine
from keyvault.errors import AuditUnavailable, PreconditionFailed
from keyvault.keys import service
from keyvault.keys.preconditions import EntityTags, Precondition
from keyvault.keys.put import WriteResult
from keyvault.keys.schemas import ApiKeyWrite
from keyvault.keys.writes import KeyWrites
from keyvault.web.state import state_of
from tests.audit_support import (
    PrivateService,
    another_instance,
    execute_sql,
    private_service,
    stored_events,
    verify,
)
from tests.conftest import bearer, key_path, mint

ALL = "api-key:read api-key:write api-key:delete users:any"
POISON = "poisoned-sub"

_POISON_TRIGGER = {
    "postgres": [
        """
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.sub = 'poisoned-sub' THEN RAISE EXCEPTION 'refused by the test'; END IF;
            RETURN NEW;
        END $$
        """,
        "CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON api_keys"
        " FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
    ],
    "sqlite": [
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON api_keys WHEN NEW.sub = 'poisoned-sub'"
        " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    ],
}


@pytest.fixture
async def running(backend: str, tmp_path: Path) -> AsyncIterator[PrivateService]:
    async with private_service(backend, tmp_path) as started:
        yield started


def _writes(running: PrivateService) -> KeyWrites:
    return state_of(running.app).key_writes


ANY = Precondition()


async def _put(
    running: PrivateService, sub: str, api_key: str, precondition: Precondition = ANY
) -> WriteResult:
    event = AuditEvent.create(action=Action.put, outcome=Outcome.ok, target=sub, actor="tester")
    body = ApiKeyWrite(api_key=SecretStr(api_key))
    return await service.put_api_key_audited(
        _writes(running), running.keyring, sub, "openai", body, precondition, event
    )


async def _key_of(running: PrivateService, sub: str) -> tuple[int, str] | None:
    response = await running.client.get(key_path(sub), headers=bearer(mint("reader", ALL)))
    if response.status_code == 404:
        return None
    assert response.status_code == 200
    body = response.json()
    return body["version"], body["api_key"]


async def _stored_subs(running: PrivateService) -> list[str]:
    """Straight from the table: with the chain head gone, reads through the service fail closed."""
    engine = create_engine(running.database_url)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(text("SELECT sub FROM api_keys ORDER BY sub"))
            return list(result.scalars())
    finally:
        await engine.dispose()


async def _put_events(running: PrivateService, sub: str) -> list[tuple[str, int | None]]:
    events = await stored_events(running.database_url, sub)
    return [
        (stored.event.outcome, stored.event.key_version)
        for stored in events
        if stored.event.action == "put"
    ]


async def test_concurrent_puts_get_consecutive_versions_and_one_event_each(
    running: PrivateService,
) -> None:
    headers = bearer(mint("writer", ALL))
    shared, others = "shared-sub", [f"own-sub-{n:02d}" for n in range(10)]
    requests = [
        running.client.put(
            key_path(shared), json={"api_key": f"sk-shared-{n:02d}-0000000000"}, headers=headers
        )
        for n in range(10)
    ] + [
        running.client.put(key_path(sub), json={"api_key": f"sk-own-{sub}-000000"}, headers=headers)
        for sub in others
    ]

    responses = await asyncio.gather(*requests)

    shared_versions = sorted(response.json()["version"] for response in responses[:10])
    assert shared_versions == list(range(1, 11))
    assert [response.status_code for response in responses[10:]] == [201] * 10
    for response in responses[:10]:
        assert response.status_code == (201 if response.json()["version"] == 1 else 200)
        assert response.headers["ETag"].startswith(f'"{response.json()["version"]}.')
    assert sorted(await _put_events(running, shared)) == [("ok", v) for v in range(1, 11)]
    for sub in others:
        assert await _put_events(running, sub) == [("ok", 1)]
        assert await _key_of(running, sub) == (1, f"sk-own-{sub}-000000")
    final = await _key_of(running, shared)
    winner = next(r for r in responses[:10] if r.json()["version"] == 10)
    assert final is not None
    assert final[0] == 10
    assert final[1][-4:] == winner.json()["last4"]
    result = await verify(running.database_url, running.keyring)
    assert result.intact, result.problem


async def test_two_workers_batching_puts_to_the_same_users_keep_versions_and_chain_whole(
    running: PrivateService,
) -> None:
    # Each worker has its own batches; both touch the same rows, listed in opposite orders.
    headers = bearer(mint("writer", ALL))
    subs = [f"both-{n}" for n in range(6)]
    async with another_instance(running) as second:
        requests = [
            client.put(key_path(sub), json={"api_key": f"sk-{label}-{sub}-00000"}, headers=headers)
            for round_ in range(3)
            for client, label, order in (
                (running.client, f"one{round_}", subs),
                (second, f"two{round_}", subs[::-1]),
            )
            for sub in order
        ]
        responses = await asyncio.gather(*requests)

    assert {r.status_code for r in responses} <= {200, 201}
    for sub in subs:
        versions = sorted(r.json()["version"] for r in responses if r.json()["sub"] == sub)
        assert versions == list(range(1, 7))
        assert sorted(await _put_events(running, sub)) == [("ok", v) for v in range(1, 7)]
    result = await verify(running.database_url, running.keyring)
    assert result.intact, result.problem


async def test_a_failed_precondition_leaves_the_rest_of_its_batch_alone(
    running: PrivateService,
) -> None:
    created = await _put(running, "guarded", "sk-guarded-original-000")
    stale = Precondition(if_match=EntityTags(strong=frozenset({'"7.0"'})))

    outcomes = await asyncio.gather(
        _put(running, "before", "sk-before-000000000000"),
        _put(running, "guarded", "sk-guarded-replaced-000", stale),
        _put(
            running,
            "guarded",
            "sk-guarded-current-0000",
            Precondition(if_match=EntityTags(strong=frozenset({created.etag}))),
        ),
        _put(running, "after", "sk-after-0000000000000"),
        return_exceptions=True,
    )

    assert isinstance(outcomes[1], PreconditionFailed)
    assert [o.status.version for o in outcomes if isinstance(o, WriteResult)] == [1, 2, 1]
    assert await _key_of(running, "guarded") == (2, "sk-guarded-current-0000")
    assert await _put_events(running, "guarded") == [("ok", 1), ("ok", 2)]
    result = await verify(running.database_url, running.keyring)
    assert result.intact, result.problem


async def test_a_batch_keeps_arrival_order_per_sub(running: PrivateService) -> None:
    # Unconditional PUTs to different subs share one statement; a second PUT to a sub and a
    # conditional PUT come after the writes that arrived before them.
    outcomes = await asyncio.gather(
        _put(running, "x", "sk-x-first-000000000000"),
        _put(running, "y", "sk-y-only-0000000000000"),
        _put(running, "x", "sk-x-second-00000000000"),
        _put(
            running,
            "y",
            "sk-y-refused-0000000000",
            Precondition(if_none_match=EntityTags(any=True)),
        ),
        _put(running, "z", "sk-z-only-0000000000000"),
        _put(running, "x", "sk-x-third-000000000000"),
        return_exceptions=True,
    )

    assert isinstance(outcomes[3], PreconditionFailed)
    written = [(o.status.sub, o.status.version) for o in outcomes if isinstance(o, WriteResult)]
    assert written == [("x", 1), ("y", 1), ("x", 2), ("z", 1), ("x", 3)]
    assert await _key_of(running, "x") == (3, "sk-x-third-000000000000")
    assert await _key_of(running, "y") == (1, "sk-y-only-0000000000000")
    assert await _put_events(running, "x") == [("ok", 1), ("ok", 2), ("ok", 3)]
    result = await verify(running.database_url, running.keyring)
    assert result.intact, result.problem


async def test_a_write_that_fails_is_retried_alone_and_fails_only_itself(
    running: PrivateService, backend: str
) -> None:
    for statement in _POISON_TRIGGER[backend]:
        await execute_sql(running.database_url, statement)

    outcomes = await asyncio.gather(
        _put(running, "first", "sk-first-00000000000000"),
        _put(running, POISON, "sk-poison-0000000000000"),
        _put(running, "last", "sk-last-000000000000000"),
        return_exceptions=True,
    )

    assert isinstance(outcomes[0], WriteResult)
    assert isinstance(outcomes[2], WriteResult)
    assert isinstance(outcomes[1], Exception)
    assert not isinstance(outcomes[1], (PreconditionFailed, AuditUnavailable))
    assert await _key_of(running, "first") == (1, "sk-first-00000000000000")
    assert await _key_of(running, "last") == (1, "sk-last-000000000000000")
    assert await _key_of(running, POISON) is None
    assert await _put_events(running, POISON) == []
    result = await verify(running.database_url, running.keyring)
    assert result.intact, result.problem
    assert result.events_checked == 2 + 3  # two PUTs, three reads


async def test_a_failing_write_over_http_is_a_500_and_its_batch_mates_succeed(
    running: PrivateService, backend: str
) -> None:
    for statement in _POISON_TRIGGER[backend]:
        await execute_sql(running.database_url, statement)
    headers = bearer(mint("writer", ALL))

    responses = await asyncio.gather(
        *(
            running.client.put(
                key_path(sub), json={"api_key": "sk-over-http-0000000"}, headers=headers
            )
            for sub in ("one", POISON, "two")
        )
    )

    assert [r.status_code for r in responses] == [201, 500, 201]
    assert responses[1].headers["Content-Type"] == "application/problem+json"
    assert "sk-over-http" not in responses[1].text
    assert await _key_of(running, POISON) is None
    result = await verify(running.database_url, running.keyring)
    assert result.intact, result.problem


async def test_a_batch_whose_events_cannot_be_stored_changes_nothing(
    running: PrivateService,
) -> None:
    await _put(running, "kept", "sk-kept-original-000000")
    await execute_sql(running.database_url, "ALTER TABLE audit_events RENAME TO audit_events_gone")

    outcomes = await asyncio.gather(
        _put(running, "kept", "sk-kept-CANARY-replaced"),
        _put(running, "never", "sk-never-CANARY-created"),
        return_exceptions=True,
    )

    assert all(isinstance(outcome, AuditUnavailable) for outcome in outcomes), outcomes
    await execute_sql(running.database_url, "ALTER TABLE audit_events_gone RENAME TO audit_events")
    assert await _key_of(running, "kept") == (1, "sk-kept-original-000000")
    assert await _key_of(running, "never") is None
    result = await verify(running.database_url, running.keyring)
    assert result.intact, result.problem


async def test_concurrent_puts_over_http_all_fail_closed_when_the_trail_cannot_record(
    running: PrivateService,
) -> None:
    headers = bearer(mint("writer", ALL))
    await execute_sql(running.database_url, "DELETE FROM audit_head")

    responses = await asyncio.gather(
        *(
            running.client.put(
                key_path(f"closed-{n}"), json={"api_key": "sk-closed-000000000"}, headers=headers
            )
            for n in range(5)
        )
    )

    assert {r.status_code for r in responses} == {503}
    assert {r.json()["type"].rsplit("/", 1)[-1] for r in responses} == {"audit-unavailable"}
    assert await _stored_subs(running) == []


async def test_shutdown_commits_the_puts_already_queued(running: PrivateService) -> None:
    writes = _writes(running)
    pending = [
        asyncio.ensure_future(_put(running, f"queued-{n}", "sk-queued-00000000000"))
        for n in range(3)
    ]
    await asyncio.sleep(0)  # the PUTs are queued; their batch has not run yet

    await writes.aclose()

    assert [task.result().status.version for task in pending] == [1, 1, 1]
    for n in range(3):
        assert await _key_of(running, f"queued-{n}") == (1, "sk-queued-00000000000")
