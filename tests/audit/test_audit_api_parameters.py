"""GET /audit's query parameters: the times, cursors and filters it refuses with 422 (and does not
audit), the bounds it takes, and an OpenAPI schema that states exactly these rules."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from keyvault.config import Settings
from tests.audit.audit_api_support import ALL, AUDITOR, make_history, search
from tests.audit_support import new_sub, stored_events
from tests.conftest import TokenFactory, bearer, key_path


def _cursor_of(text: str) -> str:
    """A cursor shaped like the ones the service issues, around any text."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def _newest_seq(client: httpx.AsyncClient, token: TokenFactory) -> int | None:
    events = (await search(client, token, limit=1))["events"]
    return int(events[0]["seq"]) if events else None


async def _refused(
    client: httpx.AsyncClient, token: TokenFactory, params: dict[str, Any]
) -> httpx.Response:
    """A search answered 422 problem+json with one reason, and no audit event (the trail is not
    audited when read, refusals included)."""
    newest = await _newest_seq(client, token)
    response = await client.get("/audit", params=params, headers=bearer(token("auditor", AUDITOR)))
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert len(response.json()["detail"].split("; ")) == 1
    assert await _newest_seq(client, token) == newest
    return response


@pytest.mark.parametrize(
    "params",
    [
        {"from": "9999-12-31T23:59:59-23:59"},
        {"to": "0001-01-01T00:00:00+23:59"},
    ],
)
async def test_times_beyond_the_calendar_once_in_utc_are_refused_with_422(
    client: httpx.AsyncClient, token: TokenFactory, params: dict[str, str]
) -> None:
    response = await _refused(client, token, params)
    assert "years 1 to 9999" in response.json()["detail"]


@pytest.mark.parametrize(
    "value",
    [
        "0.5",
        "1700000000",
        "-1",
        "2026-11-28",
        "2026-11-28T13:05:00",
        "2026-11-28T13:05",
        "2026-11-28 13:05:00Z",
        "2026-11-28T13:05:00+0100",
        "2026-11-28T13:05:00,5Z",
        "2026-11-28T13:05:00Z\n",
        "2026-11-28T13:05:00Z ",
        "\u0662026-11-28T13:05:00Z",
    ],
)
@pytest.mark.parametrize("name", ["from", "to"])
async def test_times_must_be_rfc3339_date_times_with_an_offset(
    client: httpx.AsyncClient, token: TokenFactory, name: str, value: str
) -> None:
    response = await _refused(client, token, {name: value})
    assert response.json()["detail"].startswith(f"query.{name}: should be an RFC 3339 date-time")


@pytest.mark.parametrize(
    "spell",
    [
        lambda moment: moment.isoformat(),
        lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        lambda moment: moment.strftime("%Y-%m-%dt%H:%M:%S.%fz"),
        lambda moment: moment.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(),
        lambda moment: moment.astimezone(timezone(timedelta(hours=-23, minutes=-59))).isoformat(),
        lambda moment: moment.isoformat().replace("+00:00", "-00:00"),
    ],
)
async def test_any_rfc3339_offset_names_the_same_instant(
    client: httpx.AsyncClient,
    token: TokenFactory,
    settings: Settings,
    unique_sub: str,
    spell: Callable[[datetime], str],
) -> None:
    await make_history(client, token, unique_sub)
    stored = await stored_events(settings.database_url.get_secret_value(), unique_sub)
    since, until = stored[1].event.occurred_at, stored[3].event.occurred_at
    body = await search(client, token, sub=unique_sub, **{"from": spell(since), "to": spell(until)})
    assert [event["seq"] for event in body["events"]] == [stored[2].seq, stored[1].seq]


async def test_the_first_and_last_instants_are_valid_bounds(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    await make_history(client, token, unique_sub)
    body = await search(
        client,
        token,
        sub=unique_sub,
        **{"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59.999999Z"},
    )
    assert len(body["events"]) == 5


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor_of(f"seq:{2**63}"),
        _cursor_of(f"seq:{2**64 + 5}"),
        _cursor_of("seq:" + "9" * 40),
        _cursor_of("seq:-5"),
        _cursor_of("seq:0"),
        _cursor_of("seq:007"),
        _cursor_of("seq:+5"),
        _cursor_of("seq: 5"),
        _cursor_of("seq:5\n"),
        _cursor_of("seq:\u0661\u0662"),
        _cursor_of("seq:"),
        _cursor_of("id:5"),
        _cursor_of("seq:5") + "!!",
        _cursor_of("seq:5") + "==",
        "c2VxOjU.",
        "A",
        "",
        "seq:5",
        "A" * 65,
    ],
)
async def test_cursors_the_service_did_not_issue_are_refused_with_422(
    client: httpx.AsyncClient, token: TokenFactory, cursor: str
) -> None:
    await _refused(client, token, {"cursor": cursor})


async def test_the_largest_sequence_number_is_a_valid_cursor(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    await make_history(client, token, unique_sub)
    body = await search(client, token, sub=unique_sub, cursor=_cursor_of(f"seq:{2**63 - 1}"))
    assert len(body["events"]) == 5


@pytest.mark.parametrize(
    "value", ["a\x00b", "\x00", "line\nbreak", "cr\rhere", "tab\there", "del\x7f", "c1\x85", ""]
)
@pytest.mark.parametrize("name", ["sub", "actor"])
async def test_filters_with_control_characters_or_empty_are_refused_with_422(
    client: httpx.AsyncClient, token: TokenFactory, name: str, value: str
) -> None:
    await _refused(client, token, {name: value})


async def test_a_filter_may_be_any_sub_the_trail_can_store(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    sub = f"{new_sub()}/ünïcode-✓"
    await client.get(key_path(sub, "/status"), headers=bearer(token(sub, ALL)))
    body = await search(client, token, sub=sub, actor=sub)
    assert [(event["target"], event["action"]) for event in body["events"]] == [(sub, "status")]


def _query_parameters(spec: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    """Each query parameter's schema for a string value (the non-null branch of an optional one)."""
    parameters: dict[str, dict[str, Any]] = {}
    for parameter in spec["paths"][path]["get"]["parameters"]:
        if parameter["in"] != "query":
            continue
        schema = parameter["schema"]
        branches = [item for item in schema.get("anyOf", [schema]) if item.get("type") != "null"]
        (parameters[parameter["name"]],) = branches
    return parameters


def _schema_admits(schema: dict[str, Any], value: str) -> bool:
    return (
        schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
        and re.fullmatch(schema["pattern"], value) is not None
    )


async def test_openapi_states_the_rules_of_the_query_parameters(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    audit = _query_parameters(spec, "/audit")
    log = _query_parameters(spec, "/users/{sub}/api-key/access-log")
    for name in ("from", "to"):
        assert audit[name]["type"] == "string"
        assert audit[name]["format"] == "date-time"
        assert "pattern" in audit[name]
    for name in ("sub", "actor"):
        assert (audit[name]["minLength"], audit[name]["maxLength"]) == (1, 255)
        assert "pattern" in audit[name]
    assert audit["cursor"] == log["cursor"]
    assert audit["cursor"]["maxLength"] == 64
    assert "pattern" in audit["cursor"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("from", "2026-11-28T13:05:00Z"),
        ("from", "2026-11-28t13:05:00.5+01:00"),
        ("to", "0.5"),
        ("to", "2026-11-28T13:05:00"),
        ("to", "2026-11-28T13:05:00+0100"),
        ("sub", "google-oauth2|1234"),
        ("sub", "a\x00b"),
        ("actor", "x" * 255),
        ("actor", "x" * 256),
        ("actor", "tab\there"),
        ("cursor", _cursor_of("seq:5")),
        ("cursor", _cursor_of("seq:5") + "!!"),
        ("cursor", ""),
    ],
)
async def test_the_server_refuses_what_the_schema_refuses_and_no_more(
    client: httpx.AsyncClient, token: TokenFactory, name: str, value: str
) -> None:
    schema = _query_parameters((await client.get("/openapi.json")).json(), "/audit")[name]
    response = await client.get(
        "/audit", params={name: value}, headers=bearer(token("auditor", AUDITOR))
    )
    assert response.status_code == (200 if _schema_admits(schema, value) else 422), response.text
