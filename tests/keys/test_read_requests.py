"""Every kind of GET /users/{sub}/api-key gets the answer the contract gives: its status, headers
and body, and its one audit event (outcome, actor, target, key version); and the refusals that
need a setting or a broken database (step-up, rate limits, a record that fails its integrity
check, an audit trail that cannot record), and the methods the path does not serve.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.audit_support import execute_sql
from tests.conftest import bearer, mint
from tests.keys.key_requests import (
    ALICE,
    ALICE_KEY,
    ALL,
    BAD_TOKEN,
    LONG,
    MALLORY,
    NO_TOKEN,
    Expect,
    Seen,
    Side,
    json_with_etag,
    seeded,
)

FORBIDDEN = {"www-authenticate": 'Bearer error="insufficient_scope"'}


def _alice(**claims: Any) -> dict[str, str]:
    return bearer(mint(ALICE, ALL, **claims))


async def _get(side: Side, path: str, **request: Any) -> Seen:
    return await side.send("GET", path, read_back=False, **request)


def key_read(version: int) -> dict[str, Any]:
    return {
        "sub": ALICE,
        "provider": "openai",
        "api_key": ALICE_KEY,
        "last4": "cdef",
        "label": None,
        "created_at": "<time>",
        "updated_at": "<time>",
        "expires_at": None,
        "version": version,
    }


REQUESTS: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {
    "own key": lambda: (f"/users/{ALICE}/api-key", {"headers": _alice()}),
    "service token": lambda: (
        f"/users/{ALICE}/api-key",
        {"headers": bearer(mint("billing-service", "api-key:read users:any"))},
    ),
    "no token": lambda: (f"/users/{ALICE}/api-key", {}),
    "basic scheme": lambda: (f"/users/{ALICE}/api-key", {"headers": {"Authorization": "Basic x"}}),
    "expired token": lambda: (
        f"/users/{ALICE}/api-key",
        {"headers": _alice(exp=int(time.time()) - 600)},
    ),
    "bad signature": lambda: (
        f"/users/{ALICE}/api-key",
        {"headers": bearer(mint(ALICE, ALL, secret="another-secret-0123456789-abcdefghijklmnop"))},
    ),
    "no read scope": lambda: (
        f"/users/{ALICE}/api-key",
        {"headers": bearer(mint(ALICE, "api-key:write"))},
    ),
    "someone else's key": lambda: (
        f"/users/{ALICE}/api-key",
        {"headers": bearer(mint(MALLORY, ALL))},
    ),
    "no key stored": lambda: ("/users/nobody/api-key", {"headers": bearer(mint("nobody", ALL))}),
    "sub too long": lambda: (
        f"/users/{'x' * 256}/api-key",
        {"headers": bearer(mint("x" * 256, ALL))},
    ),
    "control character": lambda: ("/users/a%01b/api-key", {"headers": bearer(mint("a\x01b", ALL))}),
    "slash in sub": lambda: ("/users/a%2Fb/api-key", {"headers": bearer(mint("a/b", ALL))}),
    "newline in sub": lambda: ("/users/a%0Ab/api-key", {"headers": bearer(mint("a\nb", ALL))}),
    "carriage return in sub": lambda: (
        "/users/a%0Db/api-key",
        {"headers": bearer(mint("a\rb", ALL))},
    ),
    "newline in sub, no token": lambda: ("/users/a%0Ab/api-key", {}),
    "invalid utf-8 in sub": lambda: (
        "/users/x%ff/api-key",
        {"headers": bearer(mint("x\ufffd", ALL))},
    ),
    "newline after the route": lambda: (f"/users/{ALICE}/api-key%0A", {"headers": _alice()}),
    "trailing slash": lambda: (f"/users/{ALICE}/api-key/", {"headers": _alice()}),
    "nested path": lambda: (
        f"/users/{ALICE}/api-key/status/api-key",
        {"headers": bearer(mint(f"{ALICE}/api-key/status", ALL))},
    ),
    "body on a GET": lambda: (
        f"/users/{ALICE}/api-key",
        {"headers": {**_alice(), "Content-Type": "text/plain"}, "content": b"hello"},
    ),
}


EXPECTED: dict[str, Expect] = {
    "bad signature": Expect(
        401,
        "The bearer token is invalid.",
        [("get", "denied_401", None, ALICE, None)],
        headers=BAD_TOKEN,
    ),
    "basic scheme": Expect(
        401,
        "A bearer token is required.",
        [("get", "denied_401", None, ALICE, None)],
        headers=NO_TOKEN,
    ),
    "body on a GET": Expect(
        200, None, [("get", "ok", ALICE, ALICE, 1)], body=key_read(1), headers=json_with_etag(1)
    ),
    "carriage return in sub": Expect(
        422,
        "path.sub: Value error, must not contain control characters",
        [("get", "invalid_request", "a?b", "a?b", None)],
    ),
    "control character": Expect(
        422,
        "path.sub: Value error, must not contain control characters",
        [("get", "invalid_request", "a?b", "a?b", None)],
    ),
    "expired token": Expect(
        401,
        "The bearer token has expired.",
        [("get", "denied_401", None, ALICE, None)],
        headers=BAD_TOKEN,
    ),
    "invalid utf-8 in sub": Expect(
        422,
        "path.sub: Value error, must be valid UTF-8 (percent-encoded) and must not contain U+FFFD",
        [("get", "invalid_request", "x\ufffd", "x\ufffd", None)],
    ),
    "nested path": Expect(
        404,
        "This user has no API key.",
        [
            (
                "get",
                "not_found",
                "google-oauth2|alice/api-key/status",
                "google-oauth2|alice/api-key/status",
                None,
            )
        ],
    ),
    "newline after the route": Expect(404, "Not Found", []),
    "newline in sub": Expect(
        422,
        "path.sub: Value error, must not contain control characters",
        [("get", "invalid_request", "a?b", "a?b", None)],
    ),
    "newline in sub, no token": Expect(
        401,
        "A bearer token is required.",
        [("get", "denied_401", None, "a?b", None)],
        headers=NO_TOKEN,
    ),
    "no key stored": Expect(
        404, "This user has no API key.", [("get", "not_found", "nobody", "nobody", None)]
    ),
    "no read scope": Expect(
        403,
        "This action needs the api-key:read scope.",
        [("get", "denied_403", ALICE, ALICE, None)],
        headers=FORBIDDEN,
    ),
    "no token": Expect(
        401,
        "A bearer token is required.",
        [("get", "denied_401", None, ALICE, None)],
        headers=NO_TOKEN,
    ),
    "own key": Expect(
        200, None, [("get", "ok", ALICE, ALICE, 1)], body=key_read(1), headers=json_with_etag(1)
    ),
    "service token": Expect(
        200,
        None,
        [("get", "ok", "billing-service", ALICE, 1)],
        body=key_read(1),
        headers=json_with_etag(1),
    ),
    "slash in sub": Expect(
        404, "This user has no API key.", [("get", "not_found", "a/b", "a/b", None)]
    ),
    "someone else's key": Expect(
        403,
        "Acting on another user's key needs the users:any scope.",
        [("get", "denied_403", MALLORY, ALICE, None)],
        headers=FORBIDDEN,
    ),
    "sub too long": Expect(
        422,
        "path.sub: String should have at most 255 characters",
        [("get", "invalid_request", LONG[:255], LONG[:255], None)],
    ),
    "trailing slash": Expect(
        307,
        None,
        [],
        headers={"location": "http://keyvault.test/users/google-oauth2%7Calice/api-key"},
    ),
}


def test_every_scenario_has_its_expected_answer() -> None:
    assert sorted(EXPECTED) == sorted(REQUESTS)


@pytest.mark.parametrize("name", sorted(REQUESTS))
async def test_each_kind_of_read_is_answered_and_audited_as_the_contract_says(
    side: Side, name: str
) -> None:
    path, request = REQUESTS[name]()
    seen = await _get(side, path, **request)
    seen.assert_is(EXPECTED[name])
    assert ALICE_KEY not in repr(seen.body) or seen.status == 200


async def test_a_record_that_fails_its_integrity_check_is_a_500_that_reveals_nothing(
    side: Side,
) -> None:
    # Alice's sealed key copied onto Mallory's row: it must never open as Mallory's.
    await execute_sql(
        side.service.database_url,
        "UPDATE api_keys SET salt = a.salt, nonce = a.nonce, ciphertext = a.ciphertext"
        " FROM (SELECT salt, nonce, ciphertext FROM api_keys WHERE sub = :alice) AS a"
        " WHERE sub = :mallory",
        alice=ALICE,
        mallory=MALLORY,
    )
    seen = await _get(side, f"/users/{MALLORY}/api-key", headers=bearer(mint(MALLORY, ALL)))
    assert seen.status == 500
    assert seen.headers["content-type"] == "application/problem+json"
    assert seen.events == [("get", "error", MALLORY, MALLORY, None)]
    assert ALICE_KEY not in repr(seen.body)


async def test_step_up_refuses_a_weak_sign_in_and_takes_a_strong_one(
    backend: str, tmp_path: Path
) -> None:
    stepped_up = {"stepup_actions": ("read",), "stepup_amr": ("mfa",)}
    async with seeded(backend, tmp_path, **stepped_up) as side:
        weak = await _get(side, f"/users/{ALICE}/api-key", headers=_alice())
        strong = await _get(side, f"/users/{ALICE}/api-key", headers=_alice(amr=["pwd", "mfa"]))
    assert weak.status == 401
    assert weak.headers["www-authenticate"].startswith(
        'Bearer error="insufficient_user_authentication"'
    )
    assert weak.events == [("get", "denied_401", ALICE, ALICE, None)]
    strong.assert_is(EXPECTED["own key"])


@pytest.mark.parametrize("limit", ["rate_limit", "rate_limit_per_address"])
async def test_rate_limits_are_spent_by_every_read_and_refuse_the_one_over(
    backend: str, tmp_path: Path, limit: str
) -> None:
    # Seeding spends two of the budget; an hour's window is never straddled by the run.
    async with seeded(backend, tmp_path, **{limit: "4/hour"}) as side:
        answers = [await _get(side, f"/users/{ALICE}/api-key", headers=_alice()) for _ in range(3)]
    assert [answer.status for answer in answers] == [200, 200, 429]
    refused = answers[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    # One client address, whose budget is the caller's by default: it is spent first, and an
    # address refused is answered before anything is known of the request, so nothing is audited.
    assert refused.events == []


async def test_an_audit_trail_that_cannot_record_refuses_with_503(side: Side) -> None:
    url = side.service.database_url
    await execute_sql(url, "ALTER TABLE audit_events RENAME TO audit_events_gone")
    try:
        answer = await side.service.client.get(f"/users/{ALICE}/api-key", headers=_alice())
    finally:
        await execute_sql(url, "ALTER TABLE audit_events_gone RENAME TO audit_events")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) >= 1
    assert ALICE_KEY not in answer.text


@pytest.mark.parametrize("method", ["POST", "PATCH", "OPTIONS", "HEAD"])
async def test_other_methods_on_the_key_path_are_405_and_head_is_a_get(
    side: Side, method: str
) -> None:
    # With a token and a JSON body that a PUT would take.
    request: dict[str, Any] = {"headers": {**_alice(), "Content-Type": "application/json"}}
    if method != "HEAD":
        request["content"] = b'{"api_key": "sk-other-method-0123456789"}'
    seen = await side.send(method, f"/users/{ALICE}/api-key", read_back=False, **request)
    if method == "HEAD":
        assert (seen.status, seen.body) == (200, b"")
        assert [event[:2] for event in seen.events] == [("get", "ok")]
    else:
        assert seen.status == 405
        assert seen.headers["allow"] == "GET, HEAD, PUT, DELETE"
        assert seen.headers["content-type"] == "application/problem+json"
        assert seen.events == []
