"""Who may call through the provider proxy, with whose key, to which paths: every refusal is a
problem+json answer before anything is sent to the provider, and is audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import update

from keyvault.crypto.records import Keyring
from keyvault.db.engine import create_engine
from keyvault.db.models import ApiKeyRecord
from tests.audit_support import new_sub, stored_events
from tests.conftest import bearer, mint
from tests.fake_provider import FakeProvider
from tests.web.proxy_support import (
    ANTHROPIC_KEY,
    CHAT,
    OPENAI_KEY,
    PROXY_MAX_BODY,
    SERVICE_USE,
    USE,
    WRITE,
    as_service,
    proxy_service,
    user_header,
    user_with_keys,
)

PROBLEM = "https://keyvault.dev/problems/"
MESSAGE = {"model": "fake-model", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def _calls(fake: FakeProvider) -> int:
    return len(fake.received)


async def _refused(
    http: httpx.AsyncClient, fake: FakeProvider, method: str, url: str, **request: Any
) -> httpx.Response:
    """The answer to a request that must not reach the provider."""
    before = _calls(fake)
    answer = await http.request(method, url, **request)
    assert answer.headers["content-type"] == "application/problem+json"
    assert _calls(fake) == before, "the provider was called"
    return answer


async def test_a_service_token_calls_with_the_named_users_key(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    sub = await user_with_keys(http)
    answer = await http.post("/proxy/openai/chat/completions", json=CHAT, headers=as_service(sub))
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "Hello from the fake provider"
    seen = fake.last("/v1/chat/completions")
    assert seen.headers["authorization"] == f"Bearer {OPENAI_KEY}"


async def test_a_users_own_token_calls_with_their_own_key(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    sub = await user_with_keys(http)
    for headers in (bearer(mint(sub, USE)), {**bearer(mint(sub, USE)), **user_header(sub)}):
        answer = await http.post("/proxy/openai/chat/completions", json=CHAT, headers=headers)
        assert answer.status_code == 200
        assert fake.last("/v1/chat/completions").headers["authorization"] == f"Bearer {OPENAI_KEY}"


async def test_the_token_may_come_in_the_providers_own_key_header(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    sub = await user_with_keys(http)
    token = mint(sub, USE)
    answer = await http.post(
        "/proxy/anthropic/v1/messages", json=MESSAGE, headers={"x-api-key": token}
    )
    assert answer.status_code == 200
    seen = fake.last("/v1/messages")
    assert seen.headers["x-api-key"] == ANTHROPIC_KEY
    assert token not in str(seen)
    # openai's key header is Authorization itself: an x-api-key is no token there.
    refused = await _refused(
        http,
        fake,
        "POST",
        "/proxy/openai/chat/completions",
        json=CHAT,
        headers={"x-api-key": token},
    )
    assert refused.status_code == 401


async def test_another_users_key_needs_users_any(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    owner = await user_with_keys(http)
    headers = {**bearer(mint(new_sub(), USE)), **user_header(owner)}
    answer = await _refused(
        http, fake, "POST", "/proxy/openai/chat/completions", json=CHAT, headers=headers
    )
    assert answer.status_code == 403
    assert answer.json()["detail"] == "Acting on another user's key needs the users:any scope."


@pytest.mark.parametrize(
    "scopes",
    ["api-key:read users:any", "api-key:read api-key:write api-key:delete users:any", "users:any"],
)
async def test_calling_needs_api_key_use_which_no_other_scope_implies(
    http: httpx.AsyncClient, fake: FakeProvider, scopes: str
) -> None:
    sub = await user_with_keys(http)
    answer = await _refused(
        http,
        fake,
        "POST",
        "/proxy/openai/chat/completions",
        json=CHAT,
        headers=as_service(sub, scopes),
    )
    assert answer.status_code == 403
    assert answer.json()["detail"] == "This action needs the api-key:use scope."


async def test_api_key_use_reads_no_key_but_sees_its_status(http: httpx.AsyncClient) -> None:
    sub = await user_with_keys(http)
    path = f"/users/{quote(sub, safe='')}/api-keys/openai"
    read = await http.get(path, headers=bearer(mint(sub, USE)))
    assert read.status_code == 403
    assert OPENAI_KEY not in read.text
    status = await http.get(f"{path}/status", headers=bearer(mint(sub, USE)))
    assert (status.status_code, status.json()["has_api_key"]) == (200, True)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic dXNlcjpwdw=="}],
)
async def test_no_valid_token_is_401(
    http: httpx.AsyncClient, fake: FakeProvider, headers: dict[str, str]
) -> None:
    answer = await _refused(
        http, fake, "POST", "/proxy/openai/chat/completions", json=CHAT, headers=headers
    )
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("named", "reason"),
    [
        ("line%0Abreak", "control characters"),
        ("bad%FFutf8", "valid UTF-8"),
        ("x" * 256, "at most 255 characters"),
    ],
)
async def test_a_user_header_that_names_no_valid_sub_is_422(
    http: httpx.AsyncClient, fake: FakeProvider, named: str, reason: str
) -> None:
    headers = {**bearer(mint(new_sub(), SERVICE_USE)), "X-Keyvault-User": named}
    answer = await _refused(
        http, fake, "POST", "/proxy/openai/chat/completions", json=CHAT, headers=headers
    )
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("header.X-Keyvault-User: ")
    assert reason in answer.json()["detail"]
    assert named not in answer.text


async def test_the_user_header_is_given_once(http: httpx.AsyncClient, fake: FakeProvider) -> None:
    sub = await user_with_keys(http)
    headers = [
        ("Authorization", f"Bearer {mint(new_sub(), SERVICE_USE)}"),
        ("X-Keyvault-User", quote(sub, safe="")),
        ("X-Keyvault-User", "someone-else"),
    ]
    answer = await _refused(
        http, fake, "POST", "/proxy/openai/chat/completions", json=CHAT, headers=headers
    )
    assert answer.status_code == 422


async def test_an_unknown_provider_is_404(http: httpx.AsyncClient, fake: FakeProvider) -> None:
    sub = await user_with_keys(http)
    answer = await _refused(
        http, fake, "POST", "/proxy/mistral/chat/completions", json=CHAT, headers=as_service(sub)
    )
    assert (answer.status_code, answer.json()["type"]) == (404, f"{PROBLEM}unknown-provider")


@pytest.mark.parametrize(
    "path",
    [
        "/proxy/openai/files",
        "/proxy/openai/v1/messages",
        "/proxy/openai",
        "/proxy/openai/",
        "/proxy/openai/audio",
        "/proxy/openai/audio/",
        "/proxy/openai/audio//speech",
        "/proxy/openai/models/",
        "/proxy/openai/chat%2Fcompletions",
        "/proxy/openai/chat%2fcompletions",
        "/proxy/openai/audio/%2E%2E/files",
        "/proxy/openai/audio/%2e/speech",
        "/proxy/openai/audio%5C..%5Cfiles",
        "/proxy/openai/audio/sp%20eech",
        "/proxy/openai/audio/%C3%A9",
        "/proxy/anthropic/v1/complete",
        "/proxy/anthropic/v1/messages/batches",
    ],
)
async def test_a_path_the_provider_does_not_allow_is_404_unsent(
    http: httpx.AsyncClient, fake: FakeProvider, path: str
) -> None:
    sub = await user_with_keys(http)
    answer = await _refused(http, fake, "POST", path, json=CHAT, headers=as_service(sub))
    assert (answer.status_code, answer.json()["type"]) == (404, f"{PROBLEM}path-not-proxied")


async def test_allowed_paths_below_a_prefix_are_forwarded(
    http: httpx.AsyncClient, database_url: str
) -> None:
    sub = await user_with_keys(http)
    answer = await http.post(
        "/proxy/openai/audio/transcriptions", content=b"x" * 1000, headers=as_service(sub)
    )
    assert answer.json() == {"text": "received 1000 bytes"}
    events = await stored_events(database_url, sub)
    assert events[-1].event.path == "audio/*"


async def test_a_user_without_a_key_for_the_provider_is_404_unsent(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    sub = await user_with_keys(http, ("openai",))
    answer = await _refused(
        http, fake, "POST", "/proxy/anthropic/v1/messages", json=MESSAGE, headers=as_service(sub)
    )
    assert (answer.status_code, answer.json()["type"]) == (404, f"{PROBLEM}not-found")


async def test_an_expired_key_is_404_unsent(
    http: httpx.AsyncClient, fake: FakeProvider, database_url: str
) -> None:
    sub = await user_with_keys(http, ("openai",), expires_at="2099-01-01T00:00:00Z")
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(ApiKeyRecord)
                .where(ApiKeyRecord.sub == sub)
                .values(expires_at=datetime(2020, 1, 1, tzinfo=UTC))
            )
    finally:
        await engine.dispose()
    answer = await _refused(
        http, fake, "POST", "/proxy/openai/chat/completions", json=CHAT, headers=as_service(sub)
    )
    assert (answer.status_code, answer.json()["type"]) == (404, f"{PROBLEM}key-expired")


async def test_a_body_declared_too_large_is_413_unsent(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    sub = await user_with_keys(http)
    answer = await _refused(
        http,
        fake,
        "POST",
        "/proxy/openai/audio/transcriptions",
        content=b"x" * (PROXY_MAX_BODY + 1),
        headers=as_service(sub),
    )
    assert answer.status_code == 413
    assert answer.json()["detail"] == f"The request body is larger than {PROXY_MAX_BODY} bytes."


async def test_a_streamed_body_that_grows_too_large_is_413_and_never_completes_upstream(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    sub = await user_with_keys(http)
    cut_short = fake.cut_short

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(PROXY_MAX_BODY // 1024 + 2):
            yield b"y" * 1024

    answer = await http.post(
        "/proxy/openai/audio/transcriptions", content=chunks(), headers=as_service(sub)
    )
    assert answer.status_code == 413
    # The provider never saw that body whole: the call was abandoned mid-body.
    assert all(len(seen.body) <= PROXY_MAX_BODY for seen in fake.received)
    assert fake.cut_short == cut_short + 1


async def test_bodies_larger_than_the_key_routes_limit_are_forwarded(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    sub = await user_with_keys(http)
    body = b"z" * (PROXY_MAX_BODY - 10)  # far over KEYVAULT_MAX_BODY_BYTES (16 KiB)
    answer = await http.post(
        "/proxy/openai/audio/transcriptions", content=body, headers=as_service(sub)
    )
    assert answer.json() == {"text": f"received {len(body)} bytes"}
    assert fake.last("/v1/audio/transcriptions").body == body


async def test_every_refusal_is_audited_as_a_use(
    http: httpx.AsyncClient, database_url: str
) -> None:
    sub = await user_with_keys(http, ("openai",))
    service = f"svc-{new_sub()}"
    calls = [
        ("/proxy/openai/chat/completions", SERVICE_USE, "ok"),
        ("/proxy/openai/files", SERVICE_USE, "not_found"),
        ("/proxy/anthropic/v1/messages", SERVICE_USE, "not_found"),
        ("/proxy/openai/chat/completions", "api-key:read users:any", "denied_403"),
    ]
    for path, scopes, _ in calls:
        headers = {**bearer(mint(service, scopes)), **user_header(sub)}
        await http.post(path, json=CHAT, headers=headers)
    events = [stored.event for stored in await stored_events(database_url, sub)]
    uses = [event for event in events if event.action == "use"]
    assert [(e.provider, e.outcome, e.actor, e.target) for e in uses] == [
        (path.split("/")[2], outcome, service, sub) for path, _, outcome in calls
    ]
    assert [e.path for e in uses] == ["chat/completions", None, "v1/messages", None]


async def test_step_up_can_be_asked_of_users_own_calls(
    database_url: str, keyring: Keyring, fake: FakeProvider
) -> None:
    async with proxy_service(
        database_url, keyring, fake, stepup_actions="use", stepup_amr="mfa"
    ) as (_, http):
        sub = await user_with_keys(http)
        weak = await _refused(
            http,
            fake,
            "POST",
            "/proxy/openai/chat/completions",
            json=CHAT,
            headers=bearer(mint(sub, USE)),
        )
        strong = await http.post(
            "/proxy/openai/chat/completions",
            json=CHAT,
            headers=bearer(mint(sub, USE, amr=["pwd", "mfa"])),
        )
        service = await http.post(
            "/proxy/openai/chat/completions", json=CHAT, headers=as_service(sub)
        )
    assert weak.status_code == 401
    assert "insufficient_user_authentication" in weak.headers["www-authenticate"]
    assert (strong.status_code, service.status_code) == (200, 200)


async def test_a_key_no_header_can_carry_is_422_unsent(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    sub = new_sub()
    path = f"/users/{quote(sub, safe='')}/api-keys/openai"
    stored = await http.put(
        path, json={"api_key": "sk-ünïcode-CANARY-0123456789"}, headers=bearer(mint(sub, WRITE))
    )
    assert stored.status_code == 201
    answer = await _refused(
        http, fake, "POST", "/proxy/openai/chat/completions", json=CHAT, headers=as_service(sub)
    )
    assert answer.status_code == 422
    assert "cannot be sent in an HTTP header" in answer.json()["detail"]
    assert "CANARY" not in answer.text


async def test_a_body_shorter_than_its_declared_length_is_502_and_audited(
    http: httpx.AsyncClient, fake: FakeProvider, database_url: str
) -> None:
    """Over ASGI a body may end short of its Content-Length (a server would wait for the rest):
    the HTTP client refuses to end the request, and the caller still gets problem+json."""
    sub = await user_with_keys(http)
    headers = {**as_service(sub), "Content-Length": "10", "Content-Type": "application/json"}
    answer = await http.post("/proxy/openai/chat/completions", content=b"{}   ", headers=headers)
    assert answer.status_code == 502
    assert answer.headers["content-type"] == "application/problem+json"
    last = (await stored_events(database_url, sub))[-1].event
    assert (last.action, last.outcome, last.path) == (
        "use",
        "provider_unavailable",
        "chat/completions",
    )
