"""Every refusal as its typed error, injected (respx) so each status and problem type is covered;
and the canaries: no error text or repr holds the token or the key, even when an answer echoes them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
import respx

from keyvault_client import (
    AsyncKeyVault,
    Conflict,
    FieldError,
    Forbidden,
    InvalidRequest,
    KeyRejected,
    KeyVault,
    KeyVaultError,
    NotFound,
    PayloadTooLarge,
    ProviderUnavailable,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    UnknownProvider,
    UnreadableAnswer,
)
from tests.client.support import CANARY_KEY, assert_no_secret

URL = "http://keyvault.test"
KEY_PATH = "/users/alice/api-keys/openai"
TOKEN = "CANARY-token-0123456789abcdef"


def problem(
    status: int, slug: str, detail: str = "refused", headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {
        "type": f"https://keyvault.dev/problems/{slug}",
        "title": slug.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
    }
    return httpx.Response(
        status,
        json=body,
        headers={
            "Content-Type": "application/problem+json",
            "X-Request-ID": "req-1",
            **(headers or {}),
        },
    )


@pytest.fixture
def mocked() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
def vault() -> Iterator[KeyVault]:
    with KeyVault(URL, token=TOKEN, retries=0) as client:
        yield client


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (
            problem(
                401, "unauthorized", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            ),
            Unauthorized,
        ),
        (problem(403, "forbidden"), Forbidden),
        (problem(404, "http-404"), NotFound),
        (problem(404, "unknown-provider"), UnknownProvider),
        (problem(409, "conflict"), Conflict),
        (problem(412, "precondition-failed"), Conflict),
        (problem(413, "payload-too-large"), PayloadTooLarge),
        (problem(422, "invalid-request", "path.sub: must not be empty"), InvalidRequest),
        (problem(429, "too-many-requests", headers={"Retry-After": "7"}), RateLimited),
        (problem(500, "record-undecryptable"), ServerError),
        (problem(502, "provider-unavailable"), ProviderUnavailable),
        (problem(502, "bad-gateway"), Unavailable),
        (problem(503, "audit-unavailable", headers={"Retry-After": "1"}), Unavailable),
        (problem(504, "provider-timeout"), ProviderUnavailable),
        (httpx.Response(418, text="teapot"), KeyVaultError),
    ],
)
def test_each_refusal_is_its_typed_error(
    mocked: respx.MockRouter, vault: KeyVault, answer: httpx.Response, kind: type[KeyVaultError]
) -> None:
    mocked.get(KEY_PATH + "/status").mock(return_value=answer)

    with pytest.raises(KeyVaultError) as raised:
        vault.status("alice")

    assert type(raised.value) is kind
    assert raised.value.status == answer.status_code
    if answer.headers.get("Content-Type") == "application/problem+json":
        assert raised.value.problem_type == answer.json()["type"]
        assert raised.value.detail == answer.json()["detail"]
        assert raised.value.request_id == "req-1"
        assert str(raised.value).startswith(f"keyvault answered {answer.status_code} ")


def test_a_401_names_the_challenge_error(mocked: respx.MockRouter, vault: KeyVault) -> None:
    challenge = 'Bearer error="insufficient_user_authentication", acr_values="urn:keyvault:mfa"'
    mocked.get(KEY_PATH).mock(
        return_value=problem(401, "unauthorized", headers={"WWW-Authenticate": challenge})
    )

    with pytest.raises(Unauthorized) as raised:
        vault.get_api_key("alice")

    assert raised.value.error == "insufficient_user_authentication"


def test_a_422_names_each_field_and_rule(mocked: respx.MockRouter, vault: KeyVault) -> None:
    detail = "api_key: Value error, must not contain whitespace; label: String should have at most 64 characters"
    mocked.put(KEY_PATH).mock(return_value=problem(422, "invalid-request", detail))

    with pytest.raises(InvalidRequest) as raised:
        vault.put_api_key("alice", CANARY_KEY)

    assert raised.value.field == "api_key"
    assert raised.value.rule == "must not contain whitespace"
    assert raised.value.errors == (
        FieldError("api_key", "must not contain whitespace"),
        FieldError("label", "String should have at most 64 characters"),
    )


def test_a_key_the_provider_rejects_is_key_rejected(
    mocked: respx.MockRouter, vault: KeyVault
) -> None:
    mocked.put(KEY_PATH, params={"validate": "true"}).mock(
        return_value=problem(422, "key-rejected-by-provider", "The provider refused this key.")
    )

    with pytest.raises(KeyRejected) as raised:
        vault.put_api_key("alice", CANARY_KEY, validate=True)

    assert isinstance(raised.value, InvalidRequest)
    assert raised.value.field is None


def test_a_429_carries_its_retry_after(mocked: respx.MockRouter, vault: KeyVault) -> None:
    mocked.get(KEY_PATH).mock(
        return_value=problem(429, "too-many-requests", headers={"Retry-After": "42"})
    )

    with pytest.raises(RateLimited) as raised:
        vault.get_api_key("alice")

    assert raised.value.retry_after == 42


@pytest.mark.parametrize("slug", ["not-found", "key-expired"])
def test_get_api_key_is_none_without_a_key_to_hand_out(
    mocked: respx.MockRouter, vault: KeyVault, slug: str
) -> None:
    mocked.get(KEY_PATH).mock(return_value=problem(404, slug))

    assert vault.get_api_key("alice") is None


def test_get_api_key_raises_for_a_missing_route_or_provider(
    mocked: respx.MockRouter, vault: KeyVault
) -> None:
    mocked.get(KEY_PATH).mock(return_value=problem(404, "http-404"))
    mocked.get("/users/alice/api-keys/nope").mock(return_value=problem(404, "unknown-provider"))

    with pytest.raises(NotFound):
        vault.get_api_key("alice")
    with pytest.raises(UnknownProvider):
        vault.get_api_key("alice", "nope")


def test_deleting_no_key_is_false(mocked: respx.MockRouter, vault: KeyVault) -> None:
    mocked.delete(KEY_PATH).mock(return_value=problem(404, "not-found"))

    assert vault.delete_api_key("alice") is False


def test_an_answer_that_is_not_json_is_unreadable(
    mocked: respx.MockRouter, vault: KeyVault
) -> None:
    mocked.get(KEY_PATH).mock(return_value=httpx.Response(200, text="<html>proxy</html>"))
    mocked.get(KEY_PATH + "/status").mock(return_value=httpx.Response(200, json=["not", "it"]))

    with pytest.raises(UnreadableAnswer):
        vault.get_api_key("alice")
    with pytest.raises(UnreadableAnswer):
        vault.status("alice")


def test_an_answer_echoing_the_key_or_token_is_scrubbed_from_every_error_text(
    mocked: respx.MockRouter, vault: KeyVault
) -> None:
    echoed = f"the key {CANARY_KEY} with token {TOKEN} is wrong"
    mocked.put(KEY_PATH).mock(return_value=problem(422, "invalid-request", f"api_key: {echoed}"))
    mocked.get(KEY_PATH).mock(return_value=problem(500, "internal-error", f"token {TOKEN}"))

    with pytest.raises(InvalidRequest) as invalid:
        vault.put_api_key("alice", f"  {CANARY_KEY}  ")
    with pytest.raises(ServerError) as failed:
        vault.get_api_key("alice")

    for error in (invalid.value, failed.value):
        texts = [str(error), repr(error), error.detail or "", error.message]
        assert_no_secret(texts, CANARY_KEY, TOKEN)
        assert "[redacted]" in str(error)
    assert_no_secret([invalid.value.rule or ""], CANARY_KEY)


def test_a_token_that_cannot_be_a_bearer_token_is_refused_without_quoting_it() -> None:
    broken = "CANARY-token\r\nX-Injected: 1"

    with pytest.raises(ValueError, match="bearer token") as raised:
        KeyVault(URL, token=broken)

    assert_no_secret([str(raised.value), repr(raised.value)], broken, "CANARY-token")


def test_a_callable_token_that_returns_garbage_is_refused(mocked: respx.MockRouter) -> None:
    route = mocked.get(KEY_PATH)
    with (
        KeyVault(URL, token=lambda: "CANARY token") as vault,
        pytest.raises(ValueError, match="bearer token") as raised,
    ):
        vault.get_api_key("alice")

    assert "CANARY" not in str(raised.value)
    assert route.call_count == 0


def test_the_clients_repr_shows_no_token() -> None:
    with KeyVault(URL, token=TOKEN) as vault:
        assert repr(vault) == "KeyVault('http://keyvault.test')"
    assert_no_secret([repr(AsyncKeyVault(URL, token=TOKEN))], TOKEN)


def tokens(*values: str) -> Callable[[], str]:
    remaining = list(values)
    return lambda: remaining.pop(0) if len(remaining) > 1 else remaining[0]


def test_a_401_asks_a_callable_for_a_new_token_once(mocked: respx.MockRouter) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == "Bearer fresh-token":
            return httpx.Response(200, json={"sub": "alice", "api_key": CANARY_KEY})
        return problem(401, "unauthorized")

    route = mocked.get(KEY_PATH).mock(side_effect=answer)

    with KeyVault(URL, token=tokens("stale-token", "fresh-token")) as vault:
        assert vault.get_api_key("alice") == CANARY_KEY

    assert route.call_count == 2


def test_a_401_is_raised_when_no_other_token_is_to_be_had(mocked: respx.MockRouter) -> None:
    route = mocked.get(KEY_PATH).mock(return_value=problem(401, "unauthorized"))

    with KeyVault(URL, token=TOKEN) as fixed, pytest.raises(Unauthorized):
        fixed.get_api_key("alice")
    with KeyVault(URL, token=lambda: TOKEN) as same, pytest.raises(Unauthorized):
        same.get_api_key("alice")
    with KeyVault(URL, token=tokens("a1", "b2", "c3")) as changing, pytest.raises(Unauthorized):
        changing.get_api_key("alice")

    assert route.call_count == 1 + 1 + 2


async def test_the_async_client_refreshes_an_awaitable_token_on_a_401(
    mocked: respx.MockRouter,
) -> None:
    issued = iter(["stale-token", "fresh-token"])

    async def token() -> str:
        return next(issued)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == "Bearer fresh-token":
            return httpx.Response(204)
        return problem(401, "unauthorized")

    mocked.delete(KEY_PATH).mock(side_effect=answer)

    async with AsyncKeyVault(URL, token=token) as vault:
        assert await vault.delete_api_key("alice") is True
