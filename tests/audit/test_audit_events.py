"""Every operation on a key, and every refusal, leaves one audit event and one JSON log line."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict

import httpx
import pytest

from keyvault.audit.events import ChainedEvent
from keyvault.config import Settings
from keyvault.errors import Problem
from keyvault.keys import service
from keyvault.observability.logs import JsonFormatter
from tests.audit_support import new_sub, stored_events
from tests.conftest import TokenFactory, bearer, key_path

ALL = "api-key:read api-key:write api-key:delete"
KEY = "sk-proj-abcdefghijkl1234"


@pytest.fixture
def unique_sub() -> str:
    return new_sub()


async def _only_event(settings: Settings, sub: str) -> ChainedEvent:
    events = await stored_events(settings.database_url.get_secret_value(), sub)
    assert len(events) == 1, [asdict(item.event) for item in events]
    return events[0]


async def test_put_records_who_did_what_from_where(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    response = await client.put(
        key_path(unique_sub),
        json={"api_key": KEY},
        headers={
            **bearer(token(unique_sub, ALL, azp="billing-service")),
            "X-Request-ID": "req-put-1",
            "User-Agent": "billing/2.1",
        },
    )
    assert response.status_code == 201
    stored = await _only_event(settings, unique_sub)
    event = stored.event
    assert (event.action, event.outcome, event.key_version) == ("put", "ok", 1)
    assert (event.actor, event.client_id, event.target) == (
        unique_sub,
        "billing-service",
        unique_sub,
    )
    assert (event.request_id, event.user_agent) == ("req-put-1", "billing/2.1")
    assert event.client_address == "127.0.0.1"
    assert event.occurred_at.tzinfo is not None


async def test_generated_request_id_is_the_one_echoed_back(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    response = await client.get(
        key_path(unique_sub, "/status"), headers=bearer(token(unique_sub, ALL))
    )
    stored = await _only_event(settings, unique_sub)
    assert stored.event.request_id == response.headers["X-Request-ID"]


@pytest.mark.parametrize(
    ("method", "suffix", "action"),
    [("GET", "", "get"), ("GET", "/status", "status"), ("DELETE", "", "delete")],
)
async def test_each_operation_records_its_action_and_key_version(
    client: httpx.AsyncClient,
    token: TokenFactory,
    settings: Settings,
    unique_sub: str,
    method: str,
    suffix: str,
    action: str,
) -> None:
    headers = bearer(token(unique_sub, ALL))
    await client.put(key_path(unique_sub), json={"api_key": KEY}, headers=headers)
    await client.put(key_path(unique_sub), json={"api_key": KEY}, headers=headers)
    response = await client.request(method, key_path(unique_sub, suffix), headers=headers)
    assert response.is_success
    last = (await stored_events(settings.database_url.get_secret_value(), unique_sub))[-1].event
    assert (last.action, last.outcome, last.key_version) == (action, "ok", 2)


async def test_status_of_a_user_without_a_key_is_recorded_without_a_version(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    await client.get(key_path(unique_sub, "/status"), headers=bearer(token(unique_sub, ALL)))
    event = (await _only_event(settings, unique_sub)).event
    assert (event.action, event.outcome, event.key_version) == ("status", "ok", None)


async def test_missing_token_is_recorded_without_an_actor(
    client: httpx.AsyncClient, settings: Settings, unique_sub: str
) -> None:
    response = await client.get(key_path(unique_sub))
    assert response.status_code == 401
    event = (await _only_event(settings, unique_sub)).event
    assert (event.action, event.outcome, event.actor, event.target) == (
        "get",
        "denied_401",
        None,
        unique_sub,
    )


async def test_forged_token_is_recorded_as_denied_401(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    forged = token(unique_sub, ALL, secret="not-the-secret-0123456789-abcdefghijklmnop")
    response = await client.delete(key_path(unique_sub), headers=bearer(forged))
    assert response.status_code == 401
    event = (await _only_event(settings, unique_sub)).event
    assert (event.action, event.outcome, event.actor) == ("delete", "denied_401", None)


async def test_missing_scope_is_recorded_as_denied_403_with_its_actor(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    response = await client.get(
        key_path(unique_sub), headers=bearer(token(unique_sub, "api-key:write"))
    )
    assert response.status_code == 403
    event = (await _only_event(settings, unique_sub)).event
    assert (event.action, event.outcome, event.actor) == ("get", "denied_403", unique_sub)


async def test_reaching_for_another_users_key_is_recorded_against_the_target(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    response = await client.get(key_path(unique_sub), headers=bearer(token("mallory", ALL)))
    assert response.status_code == 403
    event = (await _only_event(settings, unique_sub)).event
    assert (event.outcome, event.actor, event.target) == ("denied_403", "mallory", unique_sub)


async def test_failed_precondition_is_recorded_and_the_key_unchanged(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    headers = bearer(token(unique_sub, ALL))
    await client.put(key_path(unique_sub), json={"api_key": KEY}, headers=headers)
    response = await client.put(
        key_path(unique_sub),
        json={"api_key": "sk-other-0000000000000"},
        headers={**headers, "If-None-Match": "*"},
    )
    assert response.status_code == 412
    events = await stored_events(settings.database_url.get_secret_value(), unique_sub)
    assert [(item.event.action, item.event.outcome) for item in events] == [
        ("put", "ok"),
        ("put", "precondition_failed"),
    ]


async def test_reading_a_missing_key_is_recorded_as_not_found(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    response = await client.get(key_path(unique_sub), headers=bearer(token(unique_sub, ALL)))
    assert response.status_code == 404
    event = (await _only_event(settings, unique_sub)).event
    assert (event.action, event.outcome) == ("get", "not_found")


async def test_deleting_a_missing_key_is_recorded_as_not_found(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    response = await client.delete(key_path(unique_sub), headers=bearer(token(unique_sub, ALL)))
    assert response.status_code == 404
    event = (await _only_event(settings, unique_sub)).event
    assert (event.action, event.outcome) == ("delete", "not_found")


async def test_invalid_body_is_recorded_as_invalid_request(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    response = await client.put(
        key_path(unique_sub), json={"api_key": ""}, headers=bearer(token(unique_sub, ALL))
    )
    assert response.status_code == 422
    event = (await _only_event(settings, unique_sub)).event
    assert (event.action, event.outcome) == ("put", "invalid_request")


async def test_sub_with_a_control_character_is_refused_and_recorded_cleaned(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings, unique_sub: str
) -> None:
    response = await client.get(
        key_path(unique_sub + "\x01x"), headers=bearer(token(unique_sub, ALL))
    )
    assert response.status_code == 422
    event = (await _only_event(settings, unique_sub + "?x")).event
    assert event.outcome == "invalid_request"


@pytest.mark.parametrize(
    ("authorised", "outcome"), [(False, "denied_401"), (True, "invalid_request")]
)
@pytest.mark.parametrize("separator", ["\n", "\r"])
async def test_sub_with_a_line_break_is_refused_and_recorded_like_any_invalid_sub(
    client: httpx.AsyncClient,
    token: TokenFactory,
    settings: Settings,
    unique_sub: str,
    separator: str,
    authorised: bool,
    outcome: str,
) -> None:
    headers = bearer(token(unique_sub, ALL)) if authorised else {}
    response = await client.get(key_path(unique_sub + separator + "x"), headers=headers)
    assert response.status_code == (422 if authorised else 401)
    event = (await _only_event(settings, unique_sub + "?x")).event
    assert (event.action, event.outcome) == ("get", outcome)
    assert event.actor == (unique_sub if authorised else None)


@pytest.mark.parametrize(
    "body",
    [
        '{"api_key": "sk-\u00e9-0000000000"}'.encode("latin-1"),
        b'{"api_key": "sk-abc\\ud800defghijkl"}',
        b"{api_key",
    ],
)
async def test_an_unreadable_body_is_recorded_as_invalid_request_with_its_actor(
    client: httpx.AsyncClient,
    token: TokenFactory,
    settings: Settings,
    unique_sub: str,
    body: bytes,
) -> None:
    response = await client.put(
        key_path(unique_sub),
        content=body,
        headers={**bearer(token(unique_sub, ALL)), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    event = (await _only_event(settings, unique_sub)).event
    assert (event.action, event.outcome, event.actor) == ("put", "invalid_request", unique_sub)


async def test_each_event_is_logged_as_one_json_line(
    client: httpx.AsyncClient,
    token: TokenFactory,
    unique_sub: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="keyvault.audit")
    headers = bearer(token(unique_sub, ALL))
    await client.put(key_path(unique_sub), json={"api_key": KEY}, headers=headers)
    await client.get(key_path(unique_sub), headers=headers)
    records = [record for record in caplog.records if record.name == "keyvault.audit"]
    lines = [json.loads(JsonFormatter().format(record)) for record in records]
    mine = [line for line in lines if line["audit"]["target"] == unique_sub]
    assert [line["message"] for line in mine] == ["audit event: put ok", "audit event: get ok"]
    assert [(line["audit"]["action"], line["audit"]["outcome"]) for line in mine] == [
        ("put", "ok"),
        ("get", "ok"),
    ]
    assert all(isinstance(line["audit"]["seq"], int) and line["audit"]["link"] for line in mine)


async def test_each_events_line_names_the_request_it_describes(
    client: httpx.AsyncClient,
    token: TokenFactory,
    unique_sub: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="keyvault.audit")
    headers = bearer(token(unique_sub, ALL))
    await client.put(key_path(unique_sub), json={"api_key": KEY}, headers=headers)
    # Concurrent reads: their events are stored in batches, each by one of the reads' tasks.
    reads = await asyncio.gather(
        *(client.get(key_path(unique_sub), headers=headers) for _ in range(10))
    )
    lines = [
        json.loads(JsonFormatter().format(record))
        for record in caplog.records
        if record.name == "keyvault.audit"
    ]
    request_ids = [
        line["request_id"]
        for line in lines
        if line["audit"]["target"] == unique_sub and line["audit"]["action"] == "get"
    ]
    assert sorted(request_ids) == sorted(read.headers["x-request-id"] for read in reads)


async def test_no_key_or_token_reaches_an_event_or_a_log_line(
    client: httpx.AsyncClient,
    token: TokenFactory,
    settings: Settings,
    unique_sub: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    canary_key = "sk-CANARY-4f1d2e3c4b5a69788796a5b4"
    canary_token = token(unique_sub, ALL, azp="canary-client")
    headers = bearer(canary_token)
    await client.put(key_path(unique_sub), json={"api_key": canary_key}, headers=headers)
    read = await client.get(key_path(unique_sub), headers=headers)
    assert read.json()["api_key"] == canary_key
    await client.put(key_path(unique_sub), json={"api_key": ""}, headers=headers)
    await client.get(key_path(unique_sub), headers=bearer(canary_token + "x"))
    await client.delete(key_path(unique_sub), headers=headers)

    events = await stored_events(settings.database_url.get_secret_value(), unique_sub)
    assert len(events) == 5
    stored_text = json.dumps([item.log_record() for item in events])
    logged_text = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    for text in (stored_text, logged_text):
        assert canary_key not in text
        assert "CANARY" not in text
        assert canary_token not in text
        assert canary_token.split(".")[2] not in text


class _TooManyRequests(Problem):
    status, slug, title = 429, "rate-limited", "Too many requests"


async def test_a_rate_limit_raised_after_authentication_is_recorded_as_rate_limited(
    client: httpx.AsyncClient,
    token: TokenFactory,
    settings: Settings,
    unique_sub: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A refusal the operation itself raises, after the caller is known.
    async def refuse(*_args: object) -> None:
        raise _TooManyRequests("Slow down.", {"Retry-After": "1"})

    monkeypatch.setattr(service, "delete_api_key", refuse)
    response = await client.delete(key_path(unique_sub), headers=bearer(token(unique_sub, ALL)))
    assert response.status_code == 429
    event = (await _only_event(settings, unique_sub)).event
    assert (event.action, event.outcome, event.actor) == ("delete", "rate_limited", unique_sub)
