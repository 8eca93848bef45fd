"""PUT /users/{sub}/api-key past what one request decides: the rate limits, an audit trail that
cannot record, and a body cut off by a disconnect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message

from tests.audit_support import execute_sql, stored_events
from tests.conftest import mint
from tests.keys.key_requests import (
    ALICE,
    ALICE_KEY,
    ALL,
    NEW_KEY,
    Side,
    seeded,
)
from tests.keys.key_requests import (
    as_ as _as,
)
from tests.keys.put_scenarios import ALICE_PATH, NEW_BODY


@pytest.mark.parametrize("limit", ["rate_limit", "rate_limit_per_address"])
async def test_rate_limits_are_spent_by_every_put_and_refuse_the_one_over(
    backend: str, tmp_path: Path, limit: str
) -> None:
    # Seeding spends two of the budget; an hour's window is never straddled by the run.
    async with seeded(backend, tmp_path, **{limit: "4/hour"}) as side:
        answers = [
            await side.service.client.put(ALICE_PATH, **NEW_BODY, headers=_as(ALICE))
            for _ in range(3)
        ]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    refused = answers[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["status"] == 429
    assert int(refused.headers["retry-after"]) >= 1


async def test_an_audit_trail_that_cannot_record_refuses_with_503_and_stores_nothing(
    backend: str, tmp_path: Path
) -> None:
    async with seeded(backend, tmp_path) as side:
        url = side.service.database_url
        await execute_sql(url, "ALTER TABLE audit_events RENAME TO audit_events_gone")
        answer = await side.service.client.put(ALICE_PATH, **NEW_BODY, headers=_as(ALICE))
        await execute_sql(url, "ALTER TABLE audit_events_gone RENAME TO audit_events")
        assert await side.stored(ALICE) == (ALICE_KEY, 1)
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) >= 1


async def test_a_body_cut_off_by_a_disconnect_stores_nothing_and_is_audited_as_an_error(
    side: Side,
) -> None:
    statuses, events, stored = await _put_cut_off_by_a_disconnect(side)
    assert statuses == [400]
    assert events == [("put", "error")]
    assert stored == (ALICE_KEY, 1)


async def _put_cut_off_by_a_disconnect(side: Side) -> tuple[Any, ...]:
    """Statuses sent, audit events and Alice's stored key after a PUT whose body (valid JSON so
    far) is cut off by the client going away."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": NEW_BODY_BYTES, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    before = len(await stored_events(side.service.database_url))
    await side.service.app(_chunked_put(ALICE_PATH, mint(ALICE, ALL)), receive, send)
    events = (await stored_events(side.service.database_url))[before:]
    return (
        [message["status"] for message in sent if message["type"] == "http.response.start"],
        [(e.event.action, e.event.outcome) for e in events],
        await side.stored(ALICE),
    )


NEW_BODY_BYTES = json.dumps({"api_key": NEW_KEY}).encode()


def _chunked_put(path: str, token: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"keyvault.test"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("keyvault.test", 80),
    }
