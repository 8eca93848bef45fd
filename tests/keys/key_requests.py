"""What the key request tables share: the seeded service, and an answer as a caller, the audit
trail and a later read see it, compared with what the contract gives (`Expect`)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.audit_support import PrivateService, private_service, stored_events
from tests.conftest import bearer, mint

ALL = "api-key:read api-key:write api-key:delete"
ALICE, MALLORY, NOBODY = "google-oauth2|alice", "google-oauth2|mallory", "google-oauth2|nobody"
ALICE_KEY = "sk-CANARY-alice-0123456789abcdef"
NEW_KEY = "sk-CANARY-new-key-0123456789"
LONG = "x" * 256
# Differ between requests by design; compared for presence only.
PER_REQUEST_HEADERS = frozenset({"x-request-id", "date", "content-length"})
# On every answer (middleware.SecurityHeaders).
EVERY_ANSWER = {"x-content-type-options": "nosniff", "cache-control": "no-store"}
TIMESTAMP_FIELDS = ("created_at", "updated_at")
NO_TOKEN = {"www-authenticate": "Bearer"}
BAD_TOKEN = {"www-authenticate": 'Bearer error="invalid_token"'}
SEEDED = {ALICE: (ALICE_KEY, 1), MALLORY: ("sk-mallory-0123456789", 1), NOBODY: None}
ALICE_REPLACED = {**SEEDED, ALICE: (NEW_KEY, 2)}
NOBODY_CREATED = {**SEEDED, NOBODY: (NEW_KEY, 1)}
Event = tuple[Any, ...]


@dataclass(frozen=True)
class Expect:
    """An answer: a problem's `detail` (None for any other answer), the audit events, a success's
    body, the headers beyond those on every answer, and each user's key afterwards."""

    status: int
    detail: str | None
    events: list[Event]
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    stored: dict[str, tuple[str, int] | None] = field(default_factory=lambda: SEEDED)


def key_status(sub: str, version: int, provider: str = "openai") -> dict[str, Any]:
    return {
        "sub": sub,
        "provider": provider,
        "has_api_key": True,
        "last4": "6789",
        "label": None,
        "created_at": "<time>",
        "updated_at": "<time>",
        "expires_at": None,
        "expired": False,
        "version": version,
    }


def json_with_etag(version: int) -> dict[str, str]:
    return {"etag": f'"{version}.<created>"', "content-type": "application/json"}


@dataclass(frozen=True)
class Seen:
    status: int
    headers: dict[str, str]
    body: Any
    events: list[Event]
    stored: dict[str, tuple[str, int] | None] | None  # None: not read back

    def assert_is(self, expected: Expect) -> None:
        headers = {**EVERY_ANSWER, **expected.headers}
        body = expected.body
        if expected.detail is not None:
            headers["content-type"] = "application/problem+json"
            assert isinstance(self.body, dict)
            assert (self.body["status"], self.body["detail"]) == (self.status, expected.detail)
            body = self.body
        stored = expected.stored if self.stored is not None else None
        assert (self.status, self.headers, self.body, self.events, self.stored) == (
            expected.status,
            headers,
            body if body is not None else b"",
            expected.events,
            stored,
        )


@dataclass
class Side:
    service: PrivateService

    async def send(self, method: str, path: str, *, read_back: bool = True, **request: Any) -> Seen:
        """The answer to the request, its audit events, and (`read_back`) each user's key after."""
        before = len(await stored_events(self.service.database_url))
        response = await self.service.client.request(method, path, **request)
        events = (await stored_events(self.service.database_url))[before:]
        assert "x-request-id" in response.headers
        headers = {k: v for k, v in response.headers.items() if k not in PER_REQUEST_HEADERS}
        if "etag" in headers:
            headers["etag"] = version_of(headers["etag"])
        return Seen(
            response.status_code,
            headers,
            without_times(response.content),
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
            {sub: await self.stored(sub) for sub in (ALICE, MALLORY, NOBODY)}
            if read_back
            else None,
        )

    async def stored(self, sub: str) -> tuple[str, int] | None:
        read = await self.service.client.get(f"/users/{sub}/api-key", headers=as_(sub))
        if read.status_code == 404:
            return None
        assert read.status_code == 200
        body = read.json()
        return body["api_key"], body["version"]

    async def etag(self, sub: str) -> str:
        read = await self.service.client.get(f"/users/{sub}/api-key/status", headers=as_(sub))
        return read.headers["etag"]


def version_of(etag: str) -> str:
    # An ETag is "<version>.<creation time in µs>" (service.etag_for): the time differs by run.
    return re.sub(r"^(W/)?\"(\d+)\.\d+\"$", r'"\2.<created>"', etag)


def without_times(content: bytes) -> Any:
    try:
        body = json.loads(content)
    except ValueError:
        return content
    if isinstance(body, dict):
        for name in TIMESTAMP_FIELDS:
            if body.get(name) is not None:
                body[name] = "<time>"
    return body


def as_(sub: str, scopes: str = ALL, **claims: Any) -> dict[str, str]:
    return bearer(mint(sub, scopes, **claims))


async def seed(service: PrivateService) -> Side:
    for sub, api_key in ((ALICE, ALICE_KEY), (MALLORY, "sk-mallory-0123456789")):
        written = await service.client.put(
            f"/users/{sub}/api-key",
            json={"api_key": api_key},
            headers=as_(sub, amr=["pwd", "mfa"]),  # passes any step-up policy
        )
        assert written.status_code == 201
    return Side(service)


@asynccontextmanager
async def seeded(backend: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[Side]:
    """A service with `overrides` over a database of its own, holding Alice's and Mallory's keys."""
    async with private_service(backend, tmp_path, **overrides) as service:
        yield await seed(service)
