"""HTTP method semantics on every route: a 405's `Allow` lists everything the path serves, and
HEAD answers as GET does, without a body (a key's HEAD is authenticated and audited as its GET)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from keyvault.audit.events import ChainedEvent
from tests.audit_support import private_service, stored_events
from tests.conftest import bearer, key_path, mint

ALL = "api-key:read api-key:write api-key:delete"
ALICE_KEY = "sk-CANARY-head-0123456789abcdef"
KEY_ROUTE = "GET, HEAD, PUT, DELETE"
GET_ONLY = "GET, HEAD"
# Differ between two requests by design.
PER_REQUEST_HEADERS = frozenset({"x-request-id", "date"})

# Each path, the methods it serves, and one method it does not.
PATHS = [
    (key_path("alice"), KEY_ROUTE, "POST"),
    (key_path("alice"), KEY_ROUTE, "PATCH"),
    (key_path("alice"), KEY_ROUTE, "OPTIONS"),
    (key_path("alice", "/status"), GET_ONLY, "PUT"),
    (key_path("alice", "/access-log"), GET_ONLY, "DELETE"),
    ("/audit", GET_ONLY, "POST"),
    ("/healthz", GET_ONLY, "POST"),
    ("/readyz", GET_ONLY, "DELETE"),
    ("/metrics", GET_ONLY, "POST"),
    ("/docs", GET_ONLY, "PUT"),
    ("/openapi.json", GET_ONLY, "POST"),
    ("/docs/static/swagger-ui.css", GET_ONLY, "POST"),
]


@pytest.mark.parametrize(("path", "allow", "method"), PATHS)
async def test_a_405_allows_every_method_the_path_serves_as_problem_json(
    client: httpx.AsyncClient, path: str, allow: str, method: str
) -> None:
    response = await client.request(method, path, headers=bearer(mint("alice", ALL)))

    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 405


class Recording:
    """The app, keeping every body byte it sends: the test client drops a HEAD answer's body
    itself, so only this shows what the app would have put on the wire."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                self.body += message.get("body", b"")
            await send(message)

        await self.app(scope, receive, recording_send)


@asynccontextmanager
async def recorded(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, Recording]]:
    recording = Recording(app)
    transport = httpx.ASGITransport(app=recording)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyvault.test") as client:
        yield client, recording


def summary(events: list[ChainedEvent]) -> list[tuple[object, ...]]:
    return [(e.event.action, e.event.outcome, e.event.actor, e.event.key_version) for e in events]


def _comparable(response: httpx.Response) -> tuple[int, dict[str, str]]:
    headers = {
        name: value for name, value in response.headers.items() if name not in PER_REQUEST_HEADERS
    }
    return response.status_code, headers


HEADERS: dict[str, Callable[[], dict[str, str]]] = {
    "none": dict,
    "owner": lambda: bearer(mint("alice", ALL)),
    "auditor": lambda: bearer(mint("auditor", "audit:read")),
}


@pytest.mark.parametrize(
    ("path", "who"),
    [
        ("/healthz", "none"),
        ("/readyz", "none"),
        ("/openapi.json", "none"),
        ("/docs", "none"),
        ("/docs/static/swagger-ui.css", "none"),
        (key_path("alice", "/status"), "owner"),
        (key_path("alice", "/status"), "none"),
        (key_path("alice"), "none"),
        (key_path("nobody"), "owner"),
        ("/audit?limit=1&sub=nobody-at-all", "auditor"),
        ("/nowhere", "none"),
    ],
)
async def test_head_answers_as_get_without_a_body(app: FastAPI, path: str, who: str) -> None:
    async with recorded(app) as (client, recording):
        get = await client.get(path, headers=HEADERS[who]())
        recording.body = b""
        head = await client.head(path, headers=HEADERS[who]())

    assert _comparable(head) == _comparable(get)
    assert "content-length" in head.headers
    assert recording.body == b""


async def test_head_of_metrics_is_its_get_without_a_body(app: FastAPI) -> None:
    async with recorded(app) as (client, recording):
        head = await client.head("/metrics")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/plain")
    assert int(head.headers["content-length"]) > 0
    assert recording.body == b""


async def test_head_of_a_key_is_its_audited_get_and_never_sends_the_key(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyvault.access")
    async with private_service(backend, tmp_path) as vault:
        owner = bearer(mint("alice", ALL))
        await vault.client.put(key_path("alice"), json={"api_key": ALICE_KEY}, headers=owner)
        async with recorded(vault.app) as (client, recording):
            before = len(await stored_events(vault.database_url))
            get = await client.get(key_path("alice"), headers=owner)
            after_get = await stored_events(vault.database_url)
            recording.body = b""
            head = await client.head(key_path("alice"), headers=owner)
            after_head = await stored_events(vault.database_url)
            refused = await client.head(key_path("alice"), headers=bearer(mint("mallory", ALL)))
            after_refusal = await stored_events(vault.database_url)

    assert get.status_code == 200
    assert ALICE_KEY in get.text
    assert _comparable(head) == _comparable(get)
    assert recording.body.count(ALICE_KEY.encode()) == 0
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"

    assert summary(after_get[before:]) == [("get", "ok", "alice", 1)]
    assert summary(after_head[len(after_get) :]) == [("get", "ok", "alice", 1)]
    assert summary(after_refusal[len(after_head) :]) == [("get", "denied_403", "mallory", None)]
    methods = [getattr(record, "method", None) for record in caplog.records]
    assert methods.count("HEAD") == 2
