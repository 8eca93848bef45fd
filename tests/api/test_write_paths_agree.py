"""PUT /users/{sub}/api-key answers the same on keyvault.write_path's short path as on the FastAPI
route: the same status, headers and body, the same audit event and the same stored key, for every
kind of request.

A write changes what the next one sees, so each path gets a database of its own, seeded alike;
each scenario runs on both, and everything the caller, the audit trail and a later read can see is
compared. Times differ between the two databases, so timestamps are compared for presence and an
ETag by its version.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message

from keyvault.web.key_routes import get_keyring
from tests.audit_support import PrivateService, execute_sql, private_service, stored_events
from tests.conftest import bearer, mint

ALL = "api-key:read api-key:write api-key:delete"
ALICE, MALLORY, NOBODY = "google-oauth2|alice", "google-oauth2|mallory", "google-oauth2|nobody"
ALICE_KEY = "sk-CANARY-alice-0123456789abcdef"
NEW_KEY = "sk-CANARY-new-key-0123456789"
# Differ between requests or databases by design; compared for presence only.
PER_REQUEST_HEADERS = frozenset({"x-request-id", "date", "content-length"})
TIMESTAMP_FIELDS = ("created_at", "updated_at")


@dataclass(frozen=True)
class Seen:
    status: int
    headers: dict[str, str]
    body: Any
    events: list[tuple[Any, ...]]
    stored: dict[str, tuple[str, int] | None]  # each user's key and version, read back afterwards


@dataclass
class Side:
    service: PrivateService

    async def send(self, method: str, path: str, **request: Any) -> Seen:
        before = len(await stored_events(self.service.database_url))
        response = await self.service.client.request(method, path, **request)
        events = (await stored_events(self.service.database_url))[before:]
        assert "x-request-id" in response.headers
        headers = {k: v for k, v in response.headers.items() if k not in PER_REQUEST_HEADERS}
        if "etag" in headers:
            headers["etag"] = _version_of(headers["etag"])
        return Seen(
            response.status_code,
            headers,
            _without_times(response.content),
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
            {sub: await self.stored(sub) for sub in (ALICE, MALLORY, NOBODY)},
        )

    async def stored(self, sub: str) -> tuple[str, int] | None:
        read = await self.service.client.get(f"/users/{sub}/api-key", headers=_as(sub))
        if read.status_code == 404:
            return None
        assert read.status_code == 200
        body = read.json()
        return body["api_key"], body["version"]

    async def etag(self, sub: str) -> str:
        read = await self.service.client.get(f"/users/{sub}/api-key/status", headers=_as(sub))
        return read.headers["etag"]


def _version_of(etag: str) -> str:
    # An ETag is "<version>.<creation time in µs>" (service.etag_for): the time differs by database.
    return re.sub(r"^(W/)?\"(\d+)\.\d+\"$", r'"\2.<created>"', etag)


def _without_times(content: bytes) -> Any:
    try:
        body = json.loads(content)
    except ValueError:
        return content
    if isinstance(body, dict):
        for field in TIMESTAMP_FIELDS:
            if body.get(field) is not None:
                body[field] = "<time>"
    return body


def _as(sub: str, scopes: str = ALL, **claims: Any) -> dict[str, str]:
    return bearer(mint(sub, scopes, **claims))


@asynccontextmanager
async def two_sides(
    backend: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[Side, Side]]:
    """The short path's side and the FastAPI route's, each over its own database, seeded alike."""
    async with AsyncExitStack() as stack:
        sides = []
        for short_paths in (True, False):
            directory = tmp_path / ("short" if short_paths else "full")
            directory.mkdir()
            service = await stack.enter_async_context(
                private_service(backend, directory, short_paths=short_paths, **overrides)
            )
            for sub, api_key in ((ALICE, ALICE_KEY), (MALLORY, "sk-mallory-0123456789")):
                written = await service.client.put(
                    f"/users/{sub}/api-key",
                    json={"api_key": api_key},
                    headers=_as(sub, amr=["pwd", "mfa"]),  # passes any step-up policy
                )
                assert written.status_code == 201
            sides.append(Side(service))
        yield sides[0], sides[1]


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


@pytest.mark.parametrize("name", sorted(REQUESTS))
async def test_both_paths_answer_audit_and_store_alike(
    backend: str, tmp_path: Path, name: str
) -> None:
    async with two_sides(backend, tmp_path) as (short, full):
        seen = []
        for side in (short, full):
            path, request = REQUESTS[name](await side.etag(ALICE))
            seen.append(await side.send("PUT", path, **request))
    assert seen[0] == seen[1]
    assert "CANARY" not in repr(seen[0].body)  # a write never echoes a key back


async def test_step_up_refusals_and_successes_are_alike(backend: str, tmp_path: Path) -> None:
    stepped_up = {"stepup_actions": ("write",), "stepup_amr": ("mfa",)}
    async with two_sides(backend, tmp_path, **stepped_up) as (short, full):
        weak, strong = [], []
        for side in (short, full):
            weak.append(await side.send("PUT", ALICE_PATH, **NEW_BODY, headers=_as(ALICE)))
            strong.append(
                await side.send(
                    "PUT", ALICE_PATH, **NEW_BODY, headers=_as(ALICE, amr=["pwd", "mfa"])
                )
            )
    assert weak[0] == weak[1]
    assert weak[0].status == 401
    assert strong[0] == strong[1]
    assert strong[0].status == 200


@pytest.mark.parametrize("limit", ["rate_limit", "rate_limit_per_address"])
async def test_rate_limits_are_spent_and_enforced_alike(
    backend: str, tmp_path: Path, limit: str
) -> None:
    # Seeding spends two of each side's budget; an hour's window is never straddled by the run.
    async with two_sides(backend, tmp_path, **{limit: "4/hour"}) as (short, full):
        answers = {}
        for name, side in (("short", short), ("full", full)):
            answers[name] = [
                await side.service.client.put(ALICE_PATH, **NEW_BODY, headers=_as(ALICE))
                for _ in range(3)
            ]
    statuses = {name: [answer.status_code for answer in seen] for name, seen in answers.items()}
    assert statuses["short"] == statuses["full"] == [200, 200, 429]
    short_429, full_429 = answers["short"][-1], answers["full"][-1]
    assert short_429.content == full_429.content
    assert abs(int(short_429.headers["retry-after"]) - int(full_429.headers["retry-after"])) <= 1


async def test_an_audit_trail_that_cannot_record_refuses_alike_and_stores_nothing(
    backend: str, tmp_path: Path
) -> None:
    async with two_sides(backend, tmp_path) as (short, full):
        answers = []
        for side in (short, full):
            url = side.service.database_url
            await execute_sql(url, "ALTER TABLE audit_events RENAME TO audit_events_gone")
            answers.append(
                await side.service.client.put(ALICE_PATH, **NEW_BODY, headers=_as(ALICE))
            )
            await execute_sql(url, "ALTER TABLE audit_events_gone RENAME TO audit_events")
            assert await side.stored(ALICE) == (ALICE_KEY, 1)
    assert (answers[0].status_code, answers[0].content) == (
        answers[1].status_code,
        answers[1].content,
    )
    assert answers[0].status_code == 503
    assert answers[0].headers["retry-after"] == answers[1].headers["retry-after"]


async def test_the_short_path_answers_a_permitted_write_without_the_fastapi_route(
    backend: str, tmp_path: Path
) -> None:
    async with private_service(backend, tmp_path) as service:
        # The FastAPI route's keyring dependency now fails; only a request it serves notices.
        def no_keyring() -> None:
            raise RuntimeError("the FastAPI route was used")

        service.app.dependency_overrides[get_keyring] = no_keyring
        written = await service.client.put(ALICE_PATH, **NEW_BODY, headers=_as(ALICE))
        service.app.dependency_overrides.clear()
        read = await service.client.get(ALICE_PATH, headers=_as(ALICE))
    assert written.status_code == 201
    assert read.json()["api_key"] == NEW_KEY


async def test_a_body_cut_off_by_a_disconnect_stores_nothing_on_either_path(
    backend: str, tmp_path: Path
) -> None:
    async with two_sides(backend, tmp_path) as (short, full):
        answers = [await _put_cut_off_by_a_disconnect(side) for side in (short, full)]
    assert answers[0] == answers[1]
    assert answers[0][2] == (ALICE_KEY, 1)


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
