"""`PUT …?validate=true` over HTTP, with the provider a local fake over real HTTP (the base URL
settings point at it): the key is stored only once the provider confirms it, the provider's
answer is never echoed, the verdict is in the audit event, and the key in no log line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.audit_support import PrivateService, new_sub, private_service, stored_events
from tests.fake_provider import FakeProvider, fake_provider, unreachable_base_url
from tests.keys.test_provider_keys import PROBLEMS, as_, provider_path
from tests.web.test_docs import documented_examples

TIMEOUT = 0.5


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with fake_provider() as provider:
        yield provider


@pytest.fixture
async def vault(backend: str, tmp_path: Path, fake: FakeProvider) -> AsyncIterator[PrivateService]:
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(
        f'[providers.downstream]\nbase_url = "{unreachable_base_url()}"\nvalidation_path = "m"\n'
    )
    async with private_service(
        backend,
        tmp_path,
        openai_base_url=f"{fake.base_url}/v1",
        anthropic_base_url=fake.base_url,
        providers_file=providers_file,
        provider_timeout=TIMEOUT,
    ) as service:
        fake.received.clear()
        yield service


async def _put(vault: PrivateService, sub: str, path: str, api_key: str) -> httpx.Response:
    return await vault.client.put(path, json={"api_key": api_key}, headers=as_(sub))


async def _stored(vault: PrivateService, sub: str, provider: str) -> str | None:
    read = await vault.client.get(provider_path(sub, provider), headers=as_(sub))
    return read.json()["api_key"] if read.status_code == 200 else None


async def _events(vault: PrivateService, sub: str) -> list[tuple[str | None, ...]]:
    return [
        (e.event.action, e.event.outcome, e.event.provider, e.event.validation)
        for e in await stored_events(vault.database_url, sub)
        if e.event.action == "put"
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_key_the_provider_confirms_is_stored(
    vault: PrivateService, fake: FakeProvider, provider: str
) -> None:
    sub = new_sub()
    path = provider_path(sub, provider) + "?validate=true"
    response = await _put(vault, sub, path, "sk-good-0123456789")
    assert response.status_code == 201
    assert await _stored(vault, sub, provider) == "sk-good-0123456789"
    assert await _events(vault, sub) == [("put", "ok", provider, "passed")]
    (seen,) = fake.received
    assert seen.path == "/v1/models"


async def test_the_openai_key_route_validates_with_openai(
    vault: PrivateService, fake: FakeProvider
) -> None:
    sub = new_sub()
    path = f"/users/{sub}/api-key?validate=1"
    assert (await _put(vault, sub, path, "sk-legacy-good-0123")).status_code == 201
    (seen,) = fake.received
    assert (seen.path, seen.headers["authorization"]) == (
        "/v1/models",
        "Bearer sk-legacy-good-0123",
    )


@pytest.mark.parametrize(
    ("provider", "key", "status", "slug", "outcome", "verdict"),
    [
        (
            "anthropic",
            "sk-CANARY-rejected-01",
            422,
            "key-rejected-by-provider",
            "rejected_by_provider",
            "rejected",
        ),
        (
            "openai",
            "sk-CANARY-forbidden-02",
            422,
            "key-rejected-by-provider",
            "rejected_by_provider",
            "rejected",
        ),
        (
            "openai",
            "sk-CANARY-broken-03",
            502,
            "provider-unavailable",
            "provider_unavailable",
            "provider_error",
        ),
        (
            "anthropic",
            "sk-CANARY-teapot-04",
            502,
            "provider-unavailable",
            "provider_unavailable",
            "provider_error",
        ),
        (
            "downstream",
            "sk-CANARY-anything-05",
            502,
            "provider-unavailable",
            "provider_unavailable",
            "unreachable",
        ),
        (
            "anthropic",
            "sk-CANARY-slow-06",
            504,
            "provider-timeout",
            "provider_unavailable",
            "timeout",
        ),
        # No header can carry it: refused without a call, not a 500.
        ("openai", "sk-CANARY-café-07", 422, "invalid-request", "invalid_request", "unsendable"),
    ],
)
async def test_a_key_the_provider_does_not_confirm_is_refused_and_nothing_stored(
    vault: PrivateService,
    caplog: pytest.LogCaptureFixture,
    provider: str,
    key: str,
    status: int,
    slug: str,
    outcome: str,
    verdict: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    sub = new_sub()
    await _put(vault, sub, provider_path(sub, provider), "sk-before-0123456789")
    response = await _put(vault, sub, provider_path(sub, provider) + "?validate=true", key)
    assert response.status_code == status
    assert response.json()["type"] == PROBLEMS + slug
    assert "CANARY" not in response.text
    assert "Incorrect API key" not in response.text  # the provider's own answer
    assert await _stored(vault, sub, provider) == "sk-before-0123456789"
    assert (await _events(vault, sub))[-1] == ("put", outcome, provider, verdict)
    assert "CANARY" not in caplog.text


async def test_the_refusals_are_the_documented_examples(vault: PrivateService) -> None:
    examples = await documented_examples(vault.client)
    sub = new_sub()
    for provider, key, slug in [
        ("anthropic", "sk-rejected-0123456789", "key-rejected-by-provider"),
        ("downstream", "sk-down-0123456789", "provider-unavailable"),
        ("anthropic", "sk-slow-0123456789", "provider-timeout"),
    ]:
        path = provider_path(sub, provider) + "?validate=true"
        assert (await _put(vault, sub, path, key)).json() == examples[slug]
    # The other 502: the same problem type, the detail saying what the provider did.
    path = provider_path(sub, "anthropic") + "?validate=true"
    broken = (await _put(vault, sub, path, "sk-broken-0123456789")).json()
    assert broken == examples["provider-unavailable"] | {
        "detail": "The provider's answer did not confirm the key; nothing was stored."
    }


@pytest.mark.parametrize("query", ["", "?validate=false", "?validate=0", "?other=1"])
async def test_without_validate_the_provider_is_not_asked(
    vault: PrivateService, fake: FakeProvider, query: str
) -> None:
    sub = new_sub()
    response = await _put(vault, sub, provider_path(sub, "anthropic") + query, "sk-rejected-0123")
    assert response.status_code == 201
    assert fake.received == []
    assert await _events(vault, sub) == [("put", "ok", "anthropic", None)]


async def test_a_validate_that_is_no_boolean_is_422_with_the_bodys_reasons(
    vault: PrivateService, fake: FakeProvider
) -> None:
    sub = new_sub()
    response = await vault.client.put(
        provider_path(sub, "anthropic") + "?validate=perhaps",
        json={"api_key": ""},
        headers=as_(sub),
    )
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "query.validate: Input should be a valid boolean, unable to interpret input;"
        " api_key: Value error, must not be empty"
    )
    assert fake.received == []
    assert await _stored(vault, sub, "anthropic") is None


async def test_validation_comes_after_the_body_and_the_preconditions_are_read(
    vault: PrivateService, fake: FakeProvider
) -> None:
    sub = new_sub()
    path = provider_path(sub, "anthropic") + "?validate=true"
    bad_body = await vault.client.put(path, json={"api_key": "a b"}, headers=as_(sub))
    bad_header = await vault.client.put(
        path, json={"api_key": "sk-good-0123456789"}, headers=as_(sub) | {"If-Match": "nope"}
    )
    assert (bad_body.status_code, bad_header.status_code) == (422, 422)
    assert fake.received == []
