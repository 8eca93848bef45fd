"""Every kind of PUT /users/{sub}/api-key gets the answer the contract gives: its status, headers
and body, its one audit event (outcome, actor, target, key version), and what is stored after it.

Each scenario runs on a service of its own, seeded with Alice's and Mallory's keys. Times differ
between runs, so timestamps are compared for presence and an ETag by its version.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.keys.key_requests import (
    ALICE,
    ALICE_REPLACED,
    BAD_TOKEN,
    LONG,
    MALLORY,
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
from tests.keys.put_scenarios import ALICE_PATH, NEW_BODY, REQUESTS

FORBIDDEN = {"www-authenticate": 'Bearer error="insufficient_scope"'}


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
        "body: Extra inputs are not permitted",
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
