"""GET /audit: auditors search the trail by target, actor, action, outcome and time, page by page."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from keyvault.config import Settings
from tests.audit.audit_api_support import ALL, AUDITOR, make_history, search
from tests.audit_support import stored_events
from tests.conftest import TokenFactory, bearer, key_path


async def test_audit_needs_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/audit")
    assert response.status_code == 401


async def test_audit_needs_the_audit_read_scope(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    response = await client.get("/audit", headers=bearer(token("someone", f"{ALL} users:any")))
    assert response.status_code == 403
    assert "audit:read" in response.json()["detail"]


async def test_search_by_target_lists_its_events_newest_first(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    await make_history(client, token, unique_sub)
    body = await search(client, token, sub=unique_sub)
    assert [(event["action"], event["outcome"]) for event in body["events"]] == [
        ("delete", "ok"),
        ("get", "denied_403"),
        ("status", "ok"),
        ("get", "ok"),
        ("put", "ok"),
    ]
    seqs = [event["seq"] for event in body["events"]]
    assert seqs == sorted(seqs, reverse=True)
    assert body["next_cursor"] is None


async def test_search_by_actor(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    await make_history(client, token, unique_sub)
    body = await search(client, token, actor=f"{unique_sub}-intruder")
    assert [(event["target"], event["outcome"]) for event in body["events"]] == [
        (unique_sub, "denied_403")
    ]


async def test_search_by_provider(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    owner = bearer(token(unique_sub, ALL))
    await client.put(key_path(unique_sub), json={"api_key": "sk-0123456789abcdef"}, headers=owner)
    path = key_path(unique_sub).replace("/api-key", "/api-keys/anthropic")
    await client.put(path, json={"api_key": "sk-0123456789abcdef"}, headers=owner)
    await client.get(path, headers=owner)
    body = await search(client, token, sub=unique_sub, provider="anthropic")
    assert [(e["action"], e["provider"]) for e in body["events"]] == [
        ("get", "anthropic"),
        ("put", "anthropic"),
    ]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"action": "get"}, [("get", "denied_403"), ("get", "ok")]),
        ({"outcome": "ok"}, [("delete", "ok"), ("status", "ok"), ("get", "ok"), ("put", "ok")]),
        ({"action": "get", "outcome": "ok"}, [("get", "ok")]),
    ],
)
async def test_search_by_action_and_outcome(
    client: httpx.AsyncClient,
    token: TokenFactory,
    unique_sub: str,
    params: dict[str, str],
    expected: list[tuple[str, str]],
) -> None:
    await make_history(client, token, unique_sub)
    body = await search(client, token, sub=unique_sub, **params)
    assert [(event["action"], event["outcome"]) for event in body["events"]] == expected


async def test_search_by_time_range(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    await make_history(client, token, unique_sub)
    stored = await stored_events(settings.database_url.get_secret_value(), unique_sub)
    since, until = stored[1].event.occurred_at, stored[3].event.occurred_at
    body = await search(
        client, token, sub=unique_sub, **{"from": since.isoformat(), "to": until.isoformat()}
    )
    assert [event["seq"] for event in body["events"]] == [stored[2].seq, stored[1].seq]


async def test_pages_follow_the_cursor_without_gaps_or_repeats(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    await make_history(client, token, unique_sub)
    everything = [event["seq"] for event in (await search(client, token, sub=unique_sub))["events"]]
    seen: list[int] = []
    pages = 0
    cursor = None
    while True:
        params: dict[str, Any] = {"sub": unique_sub, "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        body = await search(client, token, **params)
        seen += [event["seq"] for event in body["events"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == everything
    assert pages == 3


async def test_events_show_request_details_but_no_secrets(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    await client.put(
        key_path(unique_sub),
        json={"api_key": "sk-CANARY-0123456789abcdef"},
        headers={**bearer(token(unique_sub, ALL)), "X-Request-ID": "trace-77"},
    )
    body = await search(client, token, sub=unique_sub)
    (event,) = body["events"]
    assert event["request_id"] == "trace-77"
    assert event["key_version"] == 1
    assert (event["provider"], event["validation"]) == ("openai", None)
    assert "CANARY" not in str(body)
    assert set(event) == {
        "seq",
        "occurred_at",
        "actor",
        "client_id",
        "action",
        "target",
        "provider",
        "outcome",
        "key_version",
        "validation",
        "path",
        "upstream_status",
        "duration_ms",
        "request_bytes",
        "response_bytes",
        "request_id",
        "client_address",
        "user_agent",
    }


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"cursor": "not-a-cursor"},
        {"action": "steal"},
        {"to": "yesterday"},
    ],
)
async def test_bad_search_parameters_are_refused_with_422(
    client: httpx.AsyncClient, token: TokenFactory, params: dict[str, Any]
) -> None:
    response = await client.get("/audit", params=params, headers=bearer(token("auditor", AUDITOR)))
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
