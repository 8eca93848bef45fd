"""Retries and refusals, with the faults injected into the client's own connection pool (respx):
what is retried and how often, what is not, and how long a retry waits."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import respx

from keyvault_client import (
    AsyncKeyVault,
    ClientCredentials,
    KeyVault,
    KeyVaultError,
    RateLimited,
    Unavailable,
)
from keyvault_client._config import DEFAULT_TIMEOUT
from keyvault_client._protocol import Attempts, RetryPolicy, read_key
from tests.client.support import CANARY_KEY, CANARY_SECRET, assert_no_secret

URL = "http://keyvault.test"
KEY_PATH = "/users/alice/api-keys/openai"
TOKEN = "CANARY-token-0123456789abcdef"
FOUND = {"sub": "alice", "provider": "openai", "api_key": CANARY_KEY, "version": 1}


def problem(status: int, slug: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"type": f"https://keyvault.dev/problems/{slug}", "title": slug, "status": status}
    return httpx.Response(
        status,
        json=body | {"detail": "refused"},
        headers={"Content-Type": "application/problem+json", **(headers or {})},
    )


def unavailable(retry_after: str = "0") -> httpx.Response:
    return problem(503, "database-unavailable", {"Retry-After": retry_after})


@pytest.fixture
def mocked() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
def vault() -> Iterator[KeyVault]:
    with KeyVault(URL, token=TOKEN, backoff=0.001) as client:
        yield client


def test_a_503_is_retried_until_keyvault_answers(mocked: respx.MockRouter, vault: KeyVault) -> None:
    route = mocked.get(KEY_PATH).mock(
        side_effect=[unavailable(), unavailable(), httpx.Response(200, json=FOUND)]
    )

    assert vault.get_api_key("alice") == CANARY_KEY
    assert route.call_count == 3


def test_retries_stop_after_the_budget(mocked: respx.MockRouter) -> None:
    route = mocked.get(KEY_PATH).mock(return_value=unavailable())

    with KeyVault(URL, token=TOKEN, retries=2) as vault, pytest.raises(Unavailable) as raised:
        vault.get_api_key("alice")

    assert route.call_count == 3
    assert raised.value.status == 503
    assert raised.value.retry_after == 0


def test_retries_zero_sends_once(mocked: respx.MockRouter) -> None:
    route = mocked.get(KEY_PATH).mock(return_value=unavailable())

    with KeyVault(URL, token=TOKEN, retries=0) as vault, pytest.raises(Unavailable):
        vault.get_api_key("alice")

    assert route.call_count == 1


def test_a_429_waits_the_retry_after_keyvault_asked_for(
    mocked: respx.MockRouter, vault: KeyVault
) -> None:
    limited = problem(429, "too-many-requests", {"Retry-After": "1"})
    route = mocked.get(KEY_PATH).mock(side_effect=[limited, httpx.Response(200, json=FOUND)])

    started = time.monotonic()
    assert vault.get_api_key("alice") == CANARY_KEY

    assert time.monotonic() - started >= 1.0
    assert route.call_count == 2


def test_a_retry_after_beyond_the_cap_is_not_waited_for(mocked: respx.MockRouter) -> None:
    route = mocked.get(KEY_PATH).mock(
        return_value=problem(429, "too-many-requests", {"Retry-After": "120"})
    )

    with (
        KeyVault(URL, token=TOKEN, max_retry_wait=5) as vault,
        pytest.raises(RateLimited) as raised,
    ):
        vault.get_api_key("alice")

    assert raised.value.retry_after == 120
    assert route.call_count == 1


def test_connect_errors_are_retried(mocked: respx.MockRouter, vault: KeyVault) -> None:
    route = mocked.get(KEY_PATH).mock(
        side_effect=[
            httpx.ConnectError("Connection refused"),
            httpx.ConnectTimeout("timed out"),
            httpx.Response(200, json=FOUND),
        ]
    )

    assert vault.get_api_key("alice") == CANARY_KEY
    assert route.call_count == 3


def test_unreachable_after_every_retry_is_unavailable(
    mocked: respx.MockRouter, vault: KeyVault
) -> None:
    route = mocked.get(KEY_PATH).mock(side_effect=httpx.ConnectError("Connection refused"))

    with pytest.raises(Unavailable, match="ConnectError") as raised:
        vault.get_api_key("alice")

    assert route.call_count == 4
    assert raised.value.status is None


def test_a_request_that_may_have_been_served_is_not_retried(
    mocked: respx.MockRouter, vault: KeyVault
) -> None:
    route = mocked.put(KEY_PATH).mock(side_effect=httpx.ReadTimeout("timed out"))

    with pytest.raises(Unavailable, match="ReadTimeout"):
        vault.put_api_key("alice", CANARY_KEY)

    assert route.call_count == 1


@pytest.mark.parametrize("method", ["put", "delete"])
def test_writes_are_idempotent_and_retried(
    mocked: respx.MockRouter, vault: KeyVault, method: str
) -> None:
    done = (
        httpx.Response(200, json=FOUND | {"has_api_key": True})
        if method == "put"
        else httpx.Response(204)
    )
    route = mocked.route(method=method.upper(), path=KEY_PATH).mock(
        side_effect=[unavailable(), done]
    )

    if method == "put":
        assert vault.put_api_key("alice", CANARY_KEY).version == 1
    else:
        assert vault.delete_api_key("alice") is True
    assert route.call_count == 2


def test_a_keyvault_that_never_answers_times_out_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, then says nothing
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with KeyVault(url, token=TOKEN, timeout=0.5) as vault, pytest.raises(Unavailable) as raised:
            vault.get_api_key("alice")

    assert "ReadTimeout" in str(raised.value)
    assert time.monotonic() - started < 3


def test_every_client_has_its_timeouts_set() -> None:
    with KeyVault(URL, token=TOKEN) as vault:
        assert vault._http.timeout == DEFAULT_TIMEOUT
    assert DEFAULT_TIMEOUT.connect == 3.0
    assert DEFAULT_TIMEOUT.read == 10.0


def test_the_token_request_is_not_retried(mocked: respx.MockRouter) -> None:
    token_route = mocked.post("http://idp.test/token").mock(return_value=unavailable())
    credentials = ClientCredentials("http://idp.test/token", "billing", CANARY_SECRET)

    with KeyVault(URL, token=credentials) as vault, pytest.raises(Unavailable) as raised:
        vault.get_api_key("alice")

    assert token_route.call_count == 1
    assert "token endpoint answered 503" in str(raised.value)


def test_a_redirect_is_not_followed_with_the_token(
    mocked: respx.MockRouter, vault: KeyVault
) -> None:
    mocked.get(KEY_PATH).mock(
        return_value=httpx.Response(307, headers={"Location": "http://elsewhere.test/x"})
    )
    elsewhere = mocked.get("http://elsewhere.test/x")

    with pytest.raises(KeyVaultError) as raised:
        vault.get_api_key("alice")

    assert raised.value.status == 307
    assert elsewhere.call_count == 0


def test_a_retry_logs_the_route_and_the_wait_but_no_secret_or_user(
    mocked: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    mocked.put(KEY_PATH).mock(side_effect=[unavailable(), httpx.Response(201, json=FOUND)])
    caplog.set_level(logging.DEBUG)

    with KeyVault(URL, token=TOKEN) as vault:
        vault.put_api_key("alice", CANARY_KEY)

    retries = [r.getMessage() for r in caplog.records if r.name == "keyvault_client"]
    assert retries == [retries[0]]
    assert retries[0].startswith("keyvault PUT /users/{sub}/api-keys/{provider}: 503; retry 1 of 3")
    assert_no_secret(retries, "alice")
    assert_no_secret([r.getMessage() for r in caplog.records], TOKEN, CANARY_KEY)


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    attempts = Attempts(RetryPolicy(retries=5, backoff=0.4, max_wait=1.0), read_key("a", "openai"))
    refused = httpx.Response(503)

    delays = [attempts.after_response(refused) for _ in range(6)]

    assert delays[5] is None
    waits = [delay for delay in delays[:5] if delay is not None]
    for wait, ceiling in zip(waits, [0.4, 0.8, 1.0, 1.0, 1.0], strict=True):
        assert ceiling / 2 <= wait <= ceiling


def test_a_retry_after_date_is_waited_as_seconds_from_now() -> None:
    attempts = Attempts(RetryPolicy(max_wait=30), read_key("a", "openai"))
    in_ten = httpx.Response(
        503,
        headers={
            "Retry-After": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))
        },
    )

    delay = attempts.after_response(in_ten)

    assert delay is not None
    assert 8 <= delay <= 10


def test_an_unusable_retry_policy_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="retries"):
        KeyVault(URL, token=TOKEN, retries=-1)
    with pytest.raises(ValueError, match="backoff"):
        KeyVault(URL, token=TOKEN, backoff=20, max_retry_wait=10)


async def test_the_async_client_retries_as_the_blocking_one(mocked: respx.MockRouter) -> None:
    route = mocked.get(KEY_PATH).mock(
        side_effect=[
            httpx.ConnectError("Connection refused"),
            unavailable(),
            httpx.Response(200, json=FOUND),
        ]
    )

    async with AsyncKeyVault(URL, token=TOKEN, backoff=0.001) as vault:
        assert await vault.get_api_key("alice") == CANARY_KEY

    assert route.call_count == 3


async def test_the_async_client_stops_after_the_budget(mocked: respx.MockRouter) -> None:
    route = mocked.get(KEY_PATH).mock(return_value=unavailable())

    async with AsyncKeyVault(URL, token=TOKEN, retries=1) as vault:
        with pytest.raises(Unavailable):
            await vault.get_api_key("alice")

    assert route.call_count == 2
