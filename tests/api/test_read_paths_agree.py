"""GET /users/{sub}/api-key answers the same on keyvault.read_path's short path as on the FastAPI
route: the same status, headers and body, and the same audit event, for every kind of request.

Each scenario runs against two apps over one database, one with the short path and one without,
and compares everything the caller and the audit trail can see.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyvault.web.app import create_app
from keyvault.web.key_routes import get_keyring
from tests.audit_support import execute_sql, private_service, stored_events
from tests.conftest import bearer, make_settings, mint

ALL = "api-key:read api-key:write api-key:delete"
ALICE, MALLORY = "google-oauth2|alice", "google-oauth2|mallory"
ALICE_KEY = "sk-CANARY-alice-0123456789abcdef"
# Differ between requests by design; compared for presence only.
PER_REQUEST_HEADERS = frozenset({"x-request-id", "date"})


@dataclass(frozen=True)
class Seen:
    status: int
    headers: dict[str, str]
    body: bytes
    events: list[tuple[Any, ...]]


@dataclass
class TwoPaths:
    short: httpx.AsyncClient
    full: httpx.AsyncClient
    database_url: str

    async def both(self, method: str, path: str, **request: Any) -> tuple[Seen, Seen]:
        return (
            await self._send(self.short, method, path, **request),
            await self._send(self.full, method, path, **request),
        )

    async def _send(
        self, client: httpx.AsyncClient, method: str, path: str, **request: Any
    ) -> Seen:
        before = len(await stored_events(self.database_url))
        response = await client.request(method, path, **request)
        events = (await stored_events(self.database_url))[before:]
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in PER_REQUEST_HEADERS
        }
        assert "x-request-id" in response.headers
        return Seen(
            response.status_code,
            headers,
            response.content,
            [
                (
                    e.event.action,
                    e.event.outcome,
                    e.event.actor,
                    e.event.target,
                    e.event.key_version,
                )
                for e in events
            ],
        )


@asynccontextmanager
async def two_paths(backend: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[TwoPaths]:
    async with private_service(backend, tmp_path, **overrides) as service:
        full_app = create_app(
            make_settings(service.database_url, **overrides),
            keyring=service.keyring,
            short_paths=False,
        )
        async with full_app.router.lifespan_context(full_app):
            transport = httpx.ASGITransport(app=full_app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://keyvault.test"
            ) as full:
                # Through both apps, so that each spends the same of its own rate-limit budgets.
                for client in (service.client, full):
                    for sub, api_key in ((ALICE, ALICE_KEY), (MALLORY, "sk-mallory-0123456789")):
                        written = await client.put(
                            f"/users/{sub}/api-key",
                            json={"api_key": api_key},
                            headers=bearer(mint(sub, ALL)),
                        )
                        assert written.status_code in (200, 201)
                yield TwoPaths(service.client, full, service.database_url)


def _alice(**claims: Any) -> dict[str, str]:
    return bearer(mint(ALICE, ALL, **claims))


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


@pytest.mark.parametrize("name", sorted(REQUESTS))
async def test_both_paths_answer_and_audit_alike(backend: str, tmp_path: Path, name: str) -> None:
    async with two_paths(backend, tmp_path) as paths:
        path, request = REQUESTS[name]()
        short, full = await paths.both("GET", path, **request)
    assert short == full
    assert ALICE_KEY.encode() not in short.body or short.status == 200


async def test_a_record_that_fails_its_integrity_check_is_refused_alike(
    backend: str, tmp_path: Path
) -> None:
    async with two_paths(backend, tmp_path) as paths:
        # Alice's sealed key copied onto Mallory's row: it must never open as Mallory's.
        await execute_sql(
            paths.database_url,
            "UPDATE api_keys SET salt = a.salt, nonce = a.nonce, ciphertext = a.ciphertext"
            " FROM (SELECT salt, nonce, ciphertext FROM api_keys WHERE sub = :alice) AS a"
            " WHERE sub = :mallory",
            alice=ALICE,
            mallory=MALLORY,
        )
        short, full = await paths.both(
            "GET", f"/users/{MALLORY}/api-key", headers=bearer(mint(MALLORY, ALL))
        )
    assert short == full
    assert short.status == 500
    assert ALICE_KEY.encode() not in short.body


async def test_step_up_refusals_and_successes_are_alike(backend: str, tmp_path: Path) -> None:
    async with two_paths(backend, tmp_path, stepup_actions=("read",), stepup_amr=("mfa",)) as paths:
        weak = await paths.both("GET", f"/users/{ALICE}/api-key", headers=_alice())
        strong = await paths.both(
            "GET", f"/users/{ALICE}/api-key", headers=_alice(amr=["pwd", "mfa"])
        )
    assert weak[0] == weak[1]
    assert weak[0].status == 401
    assert strong[0] == strong[1]
    assert strong[0].status == 200


@pytest.mark.parametrize("limit", ["rate_limit", "rate_limit_per_address"])
async def test_rate_limits_are_spent_and_enforced_alike(
    backend: str, tmp_path: Path, limit: str
) -> None:
    # An hour's window: a run of a second almost never straddles two windows, which would weigh
    # the two paths' budgets differently.
    async with two_paths(backend, tmp_path, **{limit: "3/hour"}) as paths:
        answers = [
            await paths.both("GET", f"/users/{ALICE}/api-key", headers=_alice()) for _ in range(3)
        ]
    for short, full in answers:
        # Retry-After counts whole seconds from the moment of each answer, and the short path
        # answers first: its count may be one more, never less.
        short_retry = int(short.headers.pop("retry-after", "0"))
        full_retry = int(full.headers.pop("retry-after", "0"))
        assert short_retry - full_retry in (0, 1)
        assert (short_retry == 0) == (short.status != 429)
        assert short == full
    assert answers[-1][0].status == 429


async def test_an_audit_trail_that_cannot_record_refuses_alike(
    backend: str, tmp_path: Path
) -> None:
    async with two_paths(backend, tmp_path) as paths:
        await execute_sql(
            paths.database_url, "ALTER TABLE audit_events RENAME TO audit_events_gone"
        )
        short = await paths.short.get(f"/users/{ALICE}/api-key", headers=_alice())
        full = await paths.full.get(f"/users/{ALICE}/api-key", headers=_alice())
        await execute_sql(
            paths.database_url, "ALTER TABLE audit_events_gone RENAME TO audit_events"
        )
    assert (short.status_code, short.content) == (full.status_code, full.content)
    assert short.status_code == 503
    assert short.headers["retry-after"] == full.headers["retry-after"]


async def test_the_short_path_answers_a_permitted_read_without_the_fastapi_route(
    backend: str, tmp_path: Path
) -> None:
    async with private_service(backend, tmp_path) as service:
        await service.client.put(
            f"/users/{ALICE}/api-key", json={"api_key": ALICE_KEY}, headers=_alice()
        )

        # The FastAPI route's keyring dependency now fails; only a request it serves notices.
        def no_keyring() -> None:
            raise RuntimeError("the FastAPI route was used")

        service.app.dependency_overrides[get_keyring] = no_keyring
        read = await service.client.get(f"/users/{ALICE}/api-key", headers=_alice())
    assert read.status_code == 200
    assert read.json()["api_key"] == ALICE_KEY


@pytest.mark.parametrize("method", ["POST", "PATCH", "OPTIONS", "HEAD"])
async def test_other_methods_on_the_key_route_are_answered_alike(
    backend: str, tmp_path: Path, method: str
) -> None:
    # With a token and a JSON body that either short path would take for its own method.
    request: dict[str, Any] = {"headers": {**_alice(), "Content-Type": "application/json"}}
    if method != "HEAD":
        request["content"] = b'{"api_key": "sk-other-method-0123456789"}'
    async with two_paths(backend, tmp_path) as paths:
        short, full = await paths.both(method, f"/users/{ALICE}/api-key", **request)
    assert short == full
    if method == "HEAD":
        assert (short.status, short.body) == (200, b"")
        assert [event[:2] for event in short.events] == [("get", "ok")]
    else:
        assert short.status == 405
        assert short.headers["allow"] == "GET, HEAD, PUT, DELETE"
        assert short.headers["content-type"] == "application/problem+json"
