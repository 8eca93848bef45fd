"""Asking a provider about a key, over real HTTP against a local fake provider: each verdict, what
the provider receives (the key its own way, the fixed headers), and the key in no log line."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from keyvault.providers.registry import Provider, builtin_providers
from keyvault.providers.validation import KeyValidator, Verdict, refusal
from tests.fake_provider import FakeProvider, fake_provider, unreachable_base_url

TIMEOUT = 0.5


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with fake_provider(frozenset({"/v1/models", "/custom/check"})) as provider:
        yield provider


@pytest.fixture
async def validator() -> AsyncIterator[KeyValidator]:
    checks = KeyValidator(TIMEOUT)
    yield checks
    await checks.aclose()


def _builtin(fake: FakeProvider) -> tuple[Provider, Provider]:
    openai, anthropic = builtin_providers(f"{fake.base_url}/v1", fake.base_url)
    return openai, anthropic


@pytest.mark.parametrize(
    ("key", "verdict"),
    [
        ("sk-good-0123456789", Verdict.passed),
        ("sk-rejected-0123456789", Verdict.rejected),
        ("sk-forbidden-0123456789", Verdict.rejected),
        ("sk-broken-0123456789", Verdict.provider_error),
        ("sk-teapot-0123456789", Verdict.provider_error),
        ("sk-moved-0123456789", Verdict.provider_error),  # redirects are not followed
    ],
)
async def test_the_providers_answer_is_the_verdict(
    fake: FakeProvider, validator: KeyValidator, key: str, verdict: Verdict
) -> None:
    for provider in _builtin(fake):
        assert await validator.check(provider, key) is verdict


async def test_openai_gets_a_bearer_key_at_its_models_path(
    fake: FakeProvider, validator: KeyValidator
) -> None:
    openai, _ = _builtin(fake)
    fake.received.clear()
    await validator.check(openai, "sk-openai-0123456789")
    (seen,) = fake.received
    assert (seen.method, seen.path) == ("GET", "/v1/models")
    assert seen.headers["authorization"] == "Bearer sk-openai-0123456789"
    assert "x-api-key" not in seen.headers


async def test_anthropic_gets_its_key_header_and_version(
    fake: FakeProvider, validator: KeyValidator
) -> None:
    _, anthropic = _builtin(fake)
    fake.received.clear()
    await validator.check(anthropic, "sk-ant-0123456789")
    (seen,) = fake.received
    assert (seen.method, seen.path) == ("GET", "/v1/models")
    assert seen.headers["x-api-key"] == "sk-ant-0123456789"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers


async def test_a_configured_provider_gets_its_own_header_and_fixed_headers(
    fake: FakeProvider, validator: KeyValidator
) -> None:
    custom = Provider(
        "custom",
        fake.base_url,
        "custom/check",
        key_header="x-custom-key",
        headers=(("custom-version", "7"),),
    )
    fake.received.clear()
    assert await validator.check(custom, "ck-0123456789") is Verdict.passed
    (seen,) = fake.received
    assert seen.path == "/custom/check"
    assert (seen.headers["x-custom-key"], seen.headers["custom-version"]) == ("ck-0123456789", "7")


async def test_a_provider_nobody_answers_for_is_unreachable(validator: KeyValidator) -> None:
    openai, _ = builtin_providers(unreachable_base_url(), unreachable_base_url())
    assert await validator.check(openai, "sk-good-0123456789") is Verdict.unreachable


async def test_a_provider_slower_than_the_timeout_times_out(
    fake: FakeProvider, validator: KeyValidator
) -> None:
    openai, _ = _builtin(fake)
    started = time.monotonic()
    assert await validator.check(openai, "sk-slow-0123456789") is Verdict.timeout
    assert time.monotonic() - started < TIMEOUT + 0.5


def test_each_verdict_but_passed_refuses_the_put() -> None:
    statuses = {verdict: getattr(refusal(verdict), "status", None) for verdict in Verdict}
    assert statuses == {
        Verdict.passed: None,
        Verdict.rejected: 422,
        Verdict.unreachable: 502,
        Verdict.provider_error: 502,
        Verdict.timeout: 504,
        Verdict.unsendable: 422,
    }


async def test_a_key_no_header_can_carry_is_not_sent(
    fake: FakeProvider, validator: KeyValidator
) -> None:
    openai, _ = _builtin(fake)
    fake.received.clear()
    assert await validator.check(openai, "sk-café-0123456789") is Verdict.unsendable
    assert fake.received == []


async def test_the_key_is_in_no_log_line(
    fake: FakeProvider, validator: KeyValidator, caplog: pytest.LogCaptureFixture
) -> None:
    openai, _ = _builtin(fake)
    caplog.set_level(logging.DEBUG)
    for key in ("sk-CANARY-broken-01", "sk-CANARY-slow-02", "sk-CANARY-rejected-03"):
        await validator.check(openai, key)
    unreachable, _ = builtin_providers(unreachable_base_url(), unreachable_base_url())
    await validator.check(unreachable, "sk-CANARY-gone-04")
    assert caplog.records
    assert "CANARY" not in caplog.text
    assert all("CANARY" not in repr(record.__dict__) for record in caplog.records)
