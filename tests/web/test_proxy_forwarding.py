"""What the provider proxy sends on and hands back: the caller's request less keyvault's own
headers, with the user's key the provider's way; the provider's answer with the key redacted;
502 and 504 when the provider fails; one audit event per call, metrics by provider and status."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from keyvault.crypto.records import Keyring
from tests.audit_support import execute_sql, new_sub, private_service, stored_events
from tests.conftest import bearer, mint
from tests.fake_provider import FakeProvider, unreachable_base_url
from tests.fake_provider_answers import BROTLI, ECHO, GZIP, HANG
from tests.prometheus import label_values, sample
from tests.web.proxy_support import (
    CHAT,
    KEYS,
    OPENAI_KEY,
    PROXY_TIMEOUT,
    WRITE,
    as_service,
    proxy_service,
    proxy_settings,
    user_with_keys,
)

REDACTED = "[redacted by keyvault]"
MESSAGE = {"model": "fake-model", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


async def test_the_request_goes_on_less_keyvaults_headers(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    sub = await user_with_keys(http)
    headers = {
        **as_service(sub),
        "Cookie": "session=keyvault-side",
        "X-Keyvault-Trace": "internal",
        "Connection": "keep-alive, x-hop",
        "X-Hop": "hop-by-hop",
        "Accept-Encoding": "gzip, br",
        "OpenAI-Organization": "org-7",
        "Content-Type": "application/json",
    }
    token = headers["Authorization"].removeprefix("Bearer ")
    headers["X-Api-Key"] = token  # keyvault's token, wherever else it is sent, stays here
    body = b'{"model": "fake-model", "messages": []}'
    answer = await http.post(
        "/proxy/openai/chat/completions?api-version=2&x=a%2Fb", content=body, headers=headers
    )
    assert answer.status_code == 200
    seen = fake.last("/v1/chat/completions")
    assert (seen.method, seen.path, seen.body) == (
        "POST",
        "/v1/chat/completions?api-version=2&x=a%2Fb",
        body,
    )
    assert seen.headers["openai-organization"] == "org-7"
    assert seen.headers["accept-encoding"] == "identity"
    assert seen.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert [name for name, _ in seen.header_list].count("authorization") == 1
    for gone in ("cookie", "x-keyvault-trace", "x-keyvault-user", "x-hop", "x-api-key"):
        assert gone not in seen.headers
    assert token not in str(seen)


async def test_the_providers_fixed_headers_go_unless_the_caller_sent_its_own(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    sub = await user_with_keys(http)
    await http.post("/proxy/anthropic/v1/messages", json=MESSAGE, headers=as_service(sub))
    seen = fake.last("/v1/messages")
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["x-api-key"] == KEYS["anthropic"]
    assert "authorization" not in seen.headers
    headers = {**as_service(sub), "anthropic-version": "2024-10-22"}
    await http.post("/proxy/anthropic/v1/messages", json=MESSAGE, headers=headers)
    assert fake.last("/v1/messages").headers["anthropic-version"] == "2024-10-22"


async def test_the_answer_comes_back_less_cookies_and_hop_by_hop_headers(
    http: httpx.AsyncClient,
) -> None:
    sub = await user_with_keys(http)
    answer = await http.post("/proxy/openai/chat/completions", json=CHAT, headers=as_service(sub))
    assert "set-cookie" not in answer.headers
    assert answer.headers["x-request-id"] == "req_fake_0001"  # the provider's, for its SDK
    assert len(answer.headers["x-keyvault-request-id"]) == 32  # keyvault's own
    assert answer.headers["content-type"] == "application/json"
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert answer.headers["cache-control"] == "no-store"


async def test_the_providers_status_and_body_pass_through(http: httpx.AsyncClient) -> None:
    sub = await user_with_keys(http)
    answer = await http.post("/proxy/openai/completions", json=CHAT, headers=as_service(sub))
    assert (answer.status_code, answer.json()) == (404, {"error": "no such path"})


async def test_head_is_forwarded_as_head(http: httpx.AsyncClient, fake: FakeProvider) -> None:
    sub = await user_with_keys(http)
    answer = await http.head("/proxy/openai/models", headers=as_service(sub))
    assert (answer.status_code, answer.content) == (200, b"")
    assert fake.last("/v1/models").method == "HEAD"


async def test_a_key_the_provider_echoes_in_its_401_is_redacted(
    http: httpx.AsyncClient, database_url: str
) -> None:
    sub = new_sub()
    key = "sk-rejected-CANARY-0123456789abcdefghijkl"
    path = f"/users/{quote(sub, safe='')}/api-keys/openai"
    await http.put(path, json={"api_key": key}, headers=bearer(mint(sub, WRITE)))
    answer = await http.post("/proxy/openai/chat/completions", json=CHAT, headers=as_service(sub))
    assert answer.status_code == 401
    assert answer.json() == {"error": {"message": f"Incorrect API key provided: {REDACTED}"}}
    assert int(answer.headers["content-length"]) == len(answer.content)
    (event,) = [e.event for e in await stored_events(database_url, sub) if e.event.action == "use"]
    assert (event.outcome, event.upstream_status) == ("ok", 401)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_key_in_the_answers_body_or_headers_is_redacted(
    http: httpx.AsyncClient, stream: bool
) -> None:
    sub = await user_with_keys(http)
    request = {**CHAT, "model": ECHO, "stream": stream}
    answer = await http.post(
        "/proxy/openai/chat/completions", json=request, headers=as_service(sub)
    )
    assert answer.status_code == 200
    assert OPENAI_KEY not in answer.text
    assert OPENAI_KEY not in str(answer.headers)
    assert answer.headers["x-echo-key"] == f"sent {REDACTED}"
    assert REDACTED in answer.text.replace('\\"', '"')
    if stream:
        assert "content-length" not in answer.headers  # streamed on, chunk by chunk


async def test_a_compressed_answer_is_read_redacted_and_passed_on_plain(
    http: httpx.AsyncClient,
) -> None:
    sub = await user_with_keys(http)
    request = {**CHAT, "model": GZIP}
    answer = await http.post(
        "/proxy/openai/chat/completions", json=request, headers=as_service(sub)
    )
    assert answer.status_code == 200
    assert "content-encoding" not in answer.headers
    assert answer.json()["choices"][0]["message"]["content"] == f"your key is {REDACTED}"


async def test_an_answer_in_an_encoding_keyvault_cannot_read_is_502(
    http: httpx.AsyncClient,
) -> None:
    sub = await user_with_keys(http)
    request = {**CHAT, "model": BROTLI}
    answer = await http.post(
        "/proxy/openai/chat/completions", json=request, headers=as_service(sub)
    )
    assert answer.status_code == 502
    assert answer.json()["type"] == "https://keyvault.dev/problems/provider-unavailable"


async def test_a_provider_that_cannot_be_reached_is_502(
    database_url: str, keyring: Keyring, fake: FakeProvider
) -> None:
    async with proxy_service(
        database_url, keyring, fake, openai_base_url=unreachable_base_url()
    ) as (_, http):
        sub = await user_with_keys(http)
        answer = await http.post(
            "/proxy/openai/chat/completions", json=CHAT, headers=as_service(sub)
        )
        events = await stored_events(database_url, sub)
    assert answer.status_code == 502
    assert answer.json()["type"] == "https://keyvault.dev/problems/provider-unavailable"
    assert OPENAI_KEY not in answer.text
    assert (events[-1].event.outcome, events[-1].event.upstream_status) == (
        "provider_unavailable",
        None,
    )


async def test_a_provider_that_does_not_answer_in_time_is_504(
    http: httpx.AsyncClient, database_url: str
) -> None:
    sub = await user_with_keys(http)
    request = {**CHAT, "model": HANG}
    answer = await http.post(
        "/proxy/openai/chat/completions", json=request, headers=as_service(sub)
    )
    assert answer.status_code == 504
    assert answer.json()["detail"].startswith("The provider did not answer within")
    event = (await stored_events(database_url, sub))[-1].event
    assert event.outcome == "provider_unavailable"
    assert event.duration_ms is not None
    assert event.duration_ms >= PROXY_TIMEOUT * 1000 * 0.9


async def test_each_call_is_one_audit_event_with_its_status_duration_and_bytes(
    http: httpx.AsyncClient, database_url: str
) -> None:
    sub = await user_with_keys(http)
    service = f"svc-{new_sub()}"
    headers = {**bearer(mint(service, "api-key:use users:any")), "X-Keyvault-User": sub}
    body = b'{"model": "fake-model", "input": "hi"}'
    answer = await http.post("/proxy/openai/embeddings", content=body, headers=headers)
    (event,) = [e.event for e in await stored_events(database_url, sub) if e.event.action == "use"]
    assert (event.actor, event.target, event.provider, event.path) == (
        service,
        sub,
        "openai",
        "embeddings",
    )
    assert (event.outcome, event.upstream_status, event.key_version) == ("ok", 200, 1)
    assert (event.request_bytes, event.response_bytes) == (len(body), len(answer.content))
    assert event.duration_ms is not None
    assert event.duration_ms >= 0
    assert OPENAI_KEY not in repr(event)


async def test_the_owners_access_log_shows_each_use(http: httpx.AsyncClient) -> None:
    sub = await user_with_keys(http)
    await http.post("/proxy/openai/chat/completions", json=CHAT, headers=as_service(sub))
    log = await http.get(
        f"/users/{quote(sub, safe='')}/api-key/access-log", headers=bearer(mint(sub, "api-key:use"))
    )
    assert log.status_code == 200
    newest = log.json()["events"][0]
    assert (newest["action"], newest["provider"], newest["path"], newest["outcome"]) == (
        "use",
        "openai",
        "chat/completions",
        "ok",
    )
    assert newest["actor"].startswith("svc-")


async def test_calls_are_counted_by_provider_and_status(http: httpx.AsyncClient) -> None:
    sub = await user_with_keys(http)
    before = (await http.get("/metrics")).text
    await http.post("/proxy/openai/chat/completions", json=CHAT, headers=as_service(sub))
    await http.post("/proxy/openai/completions", json=CHAT, headers=as_service(sub))
    after = (await http.get("/metrics")).text
    ok = {"provider": "openai", "status": "200", "outcome": "ok"}
    missing = {"provider": "openai", "status": "404", "outcome": "ok"}
    for labels in (ok, missing):
        name = "keyvault_proxy_calls_total"
        assert sample(after, name, **labels) == sample(before, name, **labels) + 1
    sent = {"provider": "openai", "direction": "request"}
    assert sample(after, "keyvault_proxy_body_bytes_total", **sent) > sample(
        before, "keyvault_proxy_body_bytes_total", **sent
    )
    route = {"route": "/proxy/{provider}/{path}", "method": "POST", "status": "200"}
    assert sample(after, "keyvault_http_requests_total", **route) >= 1
    assert not any(sub in value or OPENAI_KEY in value for value in label_values(after))


async def test_calls_draw_on_the_callers_rate_limit(
    database_url: str, keyring: Keyring, fake: FakeProvider
) -> None:
    async with proxy_service(database_url, keyring, fake, rate_limit_service="2/hour") as (
        _,
        http,
    ):
        sub = await user_with_keys(http)
        headers = as_service(sub)
        statuses = [
            (
                await http.post("/proxy/openai/chat/completions", json=CHAT, headers=headers)
            ).status_code
            for _ in range(3)
        ]
    assert statuses == [200, 200, 429]


async def test_a_call_whose_event_cannot_be_stored_is_counted(
    backend: str, tmp_path: Path, fake: FakeProvider
) -> None:
    async with private_service(backend, tmp_path, **proxy_settings(fake)) as vault:
        sub = await user_with_keys(vault.client)
        before = (await vault.client.get("/metrics")).text
        await execute_sql(vault.database_url, "ALTER TABLE audit_events RENAME TO gone")
        try:
            answer = await vault.client.post(
                "/proxy/openai/chat/completions", json=CHAT, headers=as_service(sub)
            )
            refused = await vault.client.post(
                "/proxy/openai/files", json=CHAT, headers=as_service(sub)
            )
        finally:
            await execute_sql(vault.database_url, "ALTER TABLE gone RENAME TO audit_events")
        after = (await vault.client.get("/metrics")).text
    # The call was made and answered; a refusal is not answered before its event is stored.
    assert (answer.status_code, refused.status_code) == (200, 503)
    name = "keyvault_proxy_unaudited_total"
    assert sample(after, name, provider="openai") == sample(before, name, provider="openai") + 1
