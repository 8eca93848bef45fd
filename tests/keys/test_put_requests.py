"""Every kind of PUT /users/{sub}/api-key gets the answer the contract gives: its status, headers
and body, its one audit event (outcome, actor, target, key version), and what is stored after it.

Each scenario runs on a service of its own, seeded with Alice's and Mallory's keys. Times differ
between runs, so timestamps are compared for presence and an ETag by its version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message

from tests.audit_support import execute_sql, stored_events
from tests.conftest import mint
from tests.keys.key_requests import (
    ALICE,
    ALICE_KEY,
    ALICE_REPLACED,
    ALL,
    BAD_TOKEN,
    LONG,
    MALLORY,
    NEW_KEY,
    NO_TOKEN,
    NOBODY,
    NOBODY_CREATED,
    SEEDED,
    Expect,
    Side,
    json_with_etag,
    key_status,
    seeded,
)
from tests.keys.key_requests import (
    as_ as _as,
)

FORBIDDEN = {"www-authenticate": 'Bearer error="insufficient_scope"'}
ALICE_PATH = f"/users/{ALICE}/api-key"
NEW_BODY: dict[str, Any] = {"json": {"api_key": NEW_KEY}}
JSON = {"Content-Type": "application/json"}

# Each scenario: the path, and the request given the side's current ETag of Alice's key.
REQUESTS: dict[str, Callable[[str], tuple[str, dict[str, Any]]]] = {
    "replace own key": lambda _: (ALICE_PATH, {**NEW_BODY, "headers": _as(ALICE)}),
    "create a key": lambda _: (f"/users/{NOBODY}/api-key", {**NEW_BODY, "headers": _as(NOBODY)}),
    "service token": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": _as("billing-service", "api-key:write users:any")},
    ),
    "key trimmed": lambda _: (
        ALICE_PATH,
        {"json": {"api_key": f"  {NEW_KEY}\n"}, "headers": _as(ALICE)},
    ),
    "json with a charset": lambda _: (
        ALICE_PATH,
        {
            "content": json.dumps({"api_key": NEW_KEY}).encode(),
            "headers": {**_as(ALICE), "Content-Type": "application/json; charset=utf-8"},
        },
    ),
    "json without a content type": lambda _: (
        ALICE_PATH,
        {"content": json.dumps({"api_key": NEW_KEY}).encode(), "headers": _as(ALICE)},
    ),
    "json as text/plain": lambda _: (
        ALICE_PATH,
        {
            "content": json.dumps({"api_key": NEW_KEY}).encode(),
            "headers": {**_as(ALICE), "Content-Type": "text/plain"},
        },
    ),
    "json in utf-16": lambda _: (
        ALICE_PATH,
        {
            "content": json.dumps({"api_key": NEW_KEY}).encode("utf-16"),
            "headers": {**_as(ALICE), **JSON},
        },
    ),
    "duplicate field": lambda _: (
        ALICE_PATH,
        {
            "content": b'{"api_key": "sk-first-0123456789", "api_key": "'
            + NEW_KEY.encode()
            + b'"}',
            "headers": {**_as(ALICE), **JSON},
        },
    ),
    "not json": lambda _: (ALICE_PATH, {"content": b"{api_key", "headers": {**_as(ALICE), **JSON}}),
    "empty body": lambda _: (ALICE_PATH, {"content": b"", "headers": {**_as(ALICE), **JSON}}),
    "a list": lambda _: (ALICE_PATH, {"json": [NEW_KEY], "headers": _as(ALICE)}),
    "extra field": lambda _: (
        ALICE_PATH,
        {"json": {"api_key": NEW_KEY, "note": "x"}, "headers": _as(ALICE)},
    ),
    "whitespace in key": lambda _: (
        ALICE_PATH,
        {"json": {"api_key": "sk-CANARY two"}, "headers": _as(ALICE)},
    ),
    "empty key": lambda _: (ALICE_PATH, {"json": {"api_key": " "}, "headers": _as(ALICE)}),
    "deeply nested json": lambda _: (
        ALICE_PATH,
        {"content": b"[" * 5000 + b"]" * 5000, "headers": {**_as(ALICE), **JSON}},
    ),
    "body too large": lambda _: (
        ALICE_PATH,
        {"json": {"api_key": "k" * 20_000}, "headers": _as(ALICE)},
    ),
    "no token": lambda _: (ALICE_PATH, NEW_BODY),
    "basic scheme": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {"Authorization": "Basic x"}},
    ),
    "expired token": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": _as(ALICE, exp=int(time.time()) - 600)},
    ),
    "no write scope": lambda _: (ALICE_PATH, {**NEW_BODY, "headers": _as(ALICE, "api-key:read")}),
    "someone else's key": lambda _: (ALICE_PATH, {**NEW_BODY, "headers": _as(MALLORY)}),
    "no token and a bad body": lambda _: (ALICE_PATH, {"json": {"api_key": ""}}),
    "sub too long": lambda _: (
        f"/users/{'x' * 256}/api-key",
        {**NEW_BODY, "headers": _as("x" * 256)},
    ),
    "control character": lambda _: ("/users/a%01b/api-key", {**NEW_BODY, "headers": _as("a\x01b")}),
    "trailing slash": lambda _: (f"{ALICE_PATH}/", {**NEW_BODY, "headers": _as(ALICE)}),
    "newline in sub": lambda _: ("/users/a%0Ab/api-key", {**NEW_BODY, "headers": _as("a\nb")}),
    "newline in sub, no token": lambda _: ("/users/a%0Ab/api-key", NEW_BODY),
    "invalid utf-8 in sub": lambda _: (
        "/users/x%ff/api-key",
        {**NEW_BODY, "headers": _as("x\ufffd")},
    ),
    "newline after the route": lambda _: (f"{ALICE_PATH}%0A", {**NEW_BODY, "headers": _as(ALICE)}),
    "lone surrogate in key": lambda _: (
        ALICE_PATH,
        {"content": b'{"api_key": "sk-abc\\ud800defghijkl"}', "headers": {**_as(ALICE), **JSON}},
    ),
    "body not utf-8": lambda _: (
        ALICE_PATH,
        {"content": b'{"api_key": "sk-\xe9-0123456789"}', "headers": {**_as(ALICE), **JSON}},
    ),
    "body not utf-8, no token": lambda _: (
        ALICE_PATH,
        {"content": b'{"api_key": "sk-\xe9-0123456789"}', "headers": JSON},
    ),
    "if-none-match on a stored key": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-None-Match": "*"}},
    ),
    "if-none-match on a new key": lambda _: (
        f"/users/{NOBODY}/api-key",
        {**NEW_BODY, "headers": {**_as(NOBODY), "If-None-Match": "*"}},
    ),
    "if-match the current etag": lambda etag: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": f'"stale", {etag}'}},
    ),
    "if-match a stale etag": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": '"1.0"'}},
    ),
    "if-match any": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": "*"}},
    ),
    "if-none-match the current etag": lambda etag: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-None-Match": f'"1.0", {etag}'}},
    ),
    "if-none-match the current etag, weak": lambda etag: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-None-Match": f"W/{etag}"}},
    ),
    "if-none-match another etag": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-None-Match": '"1.0"'}},
    ),
    "if-none-match in two field lines": lambda etag: (
        ALICE_PATH,
        {
            **NEW_BODY,
            "headers": [*_as(ALICE).items(), ("If-None-Match", '"1.0"'), ("If-None-Match", etag)],
        },
    ),
    "if-match the current etag, weak": lambda etag: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": f"W/{etag}"}},
    ),
    "if-match any in a list": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": '*, "x"'}},
    ),
    "if-match not quoted": lambda _: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": "1.0"}},
    ),
    "if-match and if-none-match": lambda etag: (
        ALICE_PATH,
        {**NEW_BODY, "headers": {**_as(ALICE), "If-Match": etag, "If-None-Match": etag}},
    ),
    "if-match any on a new key": lambda _: (
        f"/users/{NOBODY}/api-key",
        {**NEW_BODY, "headers": {**_as(NOBODY), "If-Match": "*"}},
    ),
}


# What the contract gives each scenario.
EXPECTED: dict[str, Expect] = {
    "a list": Expect(
        422,
        "Input should be a valid dictionary or object to extract fields from",
        [("put", "invalid_request", ALICE, ALICE, None)],
    ),
    "basic scheme": Expect(
        401,
        "A bearer token is required.",
        [("put", "denied_401", None, ALICE, None)],
        headers=NO_TOKEN,
    ),
    "body not utf-8": Expect(
        422, "body is not valid UTF-8", [("put", "invalid_request", ALICE, ALICE, None)]
    ),
    "body not utf-8, no token": Expect(
        401,
        "A bearer token is required.",
        [("put", "denied_401", None, ALICE, None)],
        headers=NO_TOKEN,
    ),
    "body too large": Expect(413, "The request body is larger than 16384 bytes.", []),
    "control character": Expect(
        422,
        "path.sub: Value error, must not contain control characters",
        [("put", "invalid_request", "a?b", "a?b", None)],
    ),
    "create a key": Expect(
        201,
        None,
        [("put", "ok", NOBODY, NOBODY, 1)],
        body=key_status(NOBODY, 1),
        headers=json_with_etag(1),
        stored=NOBODY_CREATED,
    ),
    "deeply nested json": Expect(
        422, "body is not valid JSON", [("put", "invalid_request", ALICE, ALICE, None)]
    ),
    "duplicate field": Expect(
        200,
        None,
        [("put", "ok", ALICE, ALICE, 2)],
        body=key_status(ALICE, 2),
        headers=json_with_etag(2),
        stored=ALICE_REPLACED,
    ),
    "empty body": Expect(422, "Field required", [("put", "invalid_request", ALICE, ALICE, None)]),
    "empty key": Expect(
        422,
        "api_key: Value error, must not be empty",
        [("put", "invalid_request", ALICE, ALICE, None)],
    ),
    "expired token": Expect(
        401,
        "The bearer token has expired.",
        [("put", "denied_401", None, ALICE, None)],
        headers=BAD_TOKEN,
    ),
    "extra field": Expect(
        422,
        "note: Extra inputs are not permitted",
        [("put", "invalid_request", ALICE, ALICE, None)],
    ),
    "if-match a stale etag": Expect(
        412,
        "The key has changed since the given ETag was issued.",
        [("put", "precondition_failed", ALICE, ALICE, None)],
    ),
    "if-match and if-none-match": Expect(
        412,
        "The key's current ETag matches If-None-Match.",
        [("put", "precondition_failed", ALICE, ALICE, None)],
    ),
    "if-match any": Expect(
        200,
        None,
        [("put", "ok", ALICE, ALICE, 2)],
        body=key_status(ALICE, 2),
        headers=json_with_etag(2),
        stored=ALICE_REPLACED,
    ),
    "if-match any in a list": Expect(
        422,
        "If-Match: `*` must stand alone, not in a list.",
        [("put", "invalid_request", ALICE, ALICE, None)],
    ),
    "if-match any on a new key": Expect(
        412,
        "This user has no API key, so If-Match cannot hold.",
        [("put", "precondition_failed", NOBODY, NOBODY, None)],
    ),
    "if-match not quoted": Expect(
        422,
        'If-Match: must be `*` or a list of entity tags ("…" or W/"…").',
        [("put", "invalid_request", ALICE, ALICE, None)],
    ),
    "if-match the current etag": Expect(
        200,
        None,
        [("put", "ok", ALICE, ALICE, 2)],
        body=key_status(ALICE, 2),
        headers=json_with_etag(2),
        stored=ALICE_REPLACED,
    ),
    "if-match the current etag, weak": Expect(
        412,
        "The key has changed since the given ETag was issued.",
        [("put", "precondition_failed", ALICE, ALICE, None)],
    ),
    "if-none-match another etag": Expect(
        200,
        None,
        [("put", "ok", ALICE, ALICE, 2)],
        body=key_status(ALICE, 2),
        headers=json_with_etag(2),
        stored=ALICE_REPLACED,
    ),
    "if-none-match in two field lines": Expect(
        412,
        "The key's current ETag matches If-None-Match.",
        [("put", "precondition_failed", ALICE, ALICE, None)],
    ),
    "if-none-match on a new key": Expect(
        201,
        None,
        [("put", "ok", NOBODY, NOBODY, 1)],
        body=key_status(NOBODY, 1),
        headers=json_with_etag(1),
        stored=NOBODY_CREATED,
    ),
    "if-none-match on a stored key": Expect(
        412,
        "This user already has an API key (If-None-Match: *).",
        [("put", "precondition_failed", ALICE, ALICE, None)],
    ),
    "if-none-match the current etag": Expect(
        412,
        "The key's current ETag matches If-None-Match.",
        [("put", "precondition_failed", ALICE, ALICE, None)],
    ),
    "if-none-match the current etag, weak": Expect(
        412,
        "The key's current ETag matches If-None-Match.",
        [("put", "precondition_failed", ALICE, ALICE, None)],
    ),
    "invalid utf-8 in sub": Expect(
        422,
        "path.sub: Value error, must be valid UTF-8 (percent-encoded) and must not contain U+FFFD",
        [("put", "invalid_request", "x\ufffd", "x\ufffd", None)],
    ),
    "json as text/plain": Expect(
        422,
        "Input should be a valid dictionary or object to extract fields from",
        [("put", "invalid_request", ALICE, ALICE, None)],
    ),
    "json in utf-16": Expect(
        422, "body is not valid UTF-8", [("put", "invalid_request", ALICE, ALICE, None)]
    ),
    "json with a charset": Expect(
        200,
        None,
        [("put", "ok", ALICE, ALICE, 2)],
        body=key_status(ALICE, 2),
        headers=json_with_etag(2),
        stored=ALICE_REPLACED,
    ),
    "json without a content type": Expect(
        422,
        "Input should be a valid dictionary or object to extract fields from",
        [("put", "invalid_request", ALICE, ALICE, None)],
    ),
    "key trimmed": Expect(
        200,
        None,
        [("put", "ok", ALICE, ALICE, 2)],
        body=key_status(ALICE, 2),
        headers=json_with_etag(2),
        stored=ALICE_REPLACED,
    ),
    "lone surrogate in key": Expect(
        422,
        "api_key: Value error, must not contain unpaired surrogates",
        [("put", "invalid_request", ALICE, ALICE, None)],
    ),
    "newline after the route": Expect(404, "Not Found", []),
    "newline in sub": Expect(
        422,
        "path.sub: Value error, must not contain control characters",
        [("put", "invalid_request", "a?b", "a?b", None)],
    ),
    "newline in sub, no token": Expect(
        401,
        "A bearer token is required.",
        [("put", "denied_401", None, "a?b", None)],
        headers=NO_TOKEN,
    ),
    "no token": Expect(
        401,
        "A bearer token is required.",
        [("put", "denied_401", None, ALICE, None)],
        headers=NO_TOKEN,
    ),
    "no token and a bad body": Expect(
        401,
        "A bearer token is required.",
        [("put", "denied_401", None, ALICE, None)],
        headers=NO_TOKEN,
    ),
    "no write scope": Expect(
        403,
        "This action needs the api-key:write scope.",
        [("put", "denied_403", ALICE, ALICE, None)],
        headers={"www-authenticate": 'Bearer error="insufficient_scope"'},
    ),
    "not json": Expect(
        422, "body is not valid JSON", [("put", "invalid_request", ALICE, ALICE, None)]
    ),
    "replace own key": Expect(
        200,
        None,
        [("put", "ok", ALICE, ALICE, 2)],
        body=key_status(ALICE, 2),
        headers=json_with_etag(2),
        stored=ALICE_REPLACED,
    ),
    "service token": Expect(
        200,
        None,
        [("put", "ok", "billing-service", ALICE, 2)],
        body=key_status(ALICE, 2),
        headers=json_with_etag(2),
        stored=ALICE_REPLACED,
    ),
    "someone else's key": Expect(
        403,
        "Acting on another user's key needs the users:any scope.",
        [("put", "denied_403", MALLORY, ALICE, None)],
        headers={"www-authenticate": 'Bearer error="insufficient_scope"'},
    ),
    "sub too long": Expect(
        422,
        "path.sub: String should have at most 255 characters",
        [("put", "invalid_request", LONG[:255], LONG[:255], None)],
    ),
    "trailing slash": Expect(
        307,
        None,
        [],
        headers={"location": "http://keyvault.test/users/google-oauth2%7Calice/api-key"},
    ),
    "whitespace in key": Expect(
        422,
        "api_key: Value error, must not contain whitespace",
        [("put", "invalid_request", ALICE, ALICE, None)],
    ),
}


def test_every_scenario_has_its_expected_answer() -> None:
    assert sorted(EXPECTED) == sorted(REQUESTS)


@pytest.mark.parametrize("name", sorted(REQUESTS))
async def test_each_kind_of_put_is_answered_audited_and_stored_as_the_contract_says(
    side: Side, name: str
) -> None:
    path, request = REQUESTS[name](await side.etag(ALICE))
    seen = await side.send("PUT", path, **request)
    seen.assert_is(EXPECTED[name])
    assert "CANARY" not in repr(seen.body)  # a write never echoes a key back


async def test_step_up_refuses_a_weak_sign_in_and_takes_a_strong_one(
    backend: str, tmp_path: Path
) -> None:
    stepped_up = {"stepup_actions": ("write",), "stepup_amr": ("mfa",)}
    async with seeded(backend, tmp_path, **stepped_up) as side:
        weak = await side.send("PUT", ALICE_PATH, **NEW_BODY, headers=_as(ALICE))
        strong = await side.send(
            "PUT", ALICE_PATH, **NEW_BODY, headers=_as(ALICE, amr=["pwd", "mfa"])
        )
    assert weak.status == 401
    assert weak.headers["www-authenticate"].startswith(
        'Bearer error="insufficient_user_authentication"'
    )
    assert weak.events == [("put", "denied_401", ALICE, ALICE, None)]
    assert weak.stored == SEEDED
    strong.assert_is(EXPECTED["replace own key"])


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
