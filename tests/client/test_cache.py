"""The opt-in cache of get_api_key: its bounds (ttl, entries, the key's own expiry), what drops an
entry, and that a read racing a write never brings back the old key. Time is the test's clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx

from keyvault_client import MAX_TTL_SECONDS, KeyVault
from keyvault_client._cache import KeyCache

URL = "http://keyvault.test"
KEY_PATH = "/users/alice/api-keys/openai"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_an_entry_lasts_its_ttl(clock: Clock) -> None:
    cache = KeyCache(10, clock=clock)
    cache.store("alice", "openai", "k1", None, cache.ticket())

    clock.now += 9.9
    assert cache.get("alice", "openai") == "k1"
    clock.now += 0.1
    assert cache.get("alice", "openai") is None
    assert len(cache) == 0


def test_an_entry_never_outlives_the_keys_expiry(clock: Clock) -> None:
    cache = KeyCache(300, clock=clock)
    soon = datetime.now(UTC) + timedelta(seconds=5)
    cache.store("alice", "openai", "k1", soon, cache.ticket())
    cache.store("bob", "openai", "k2", datetime.now(UTC) - timedelta(seconds=1), cache.ticket())

    assert cache.get("bob", "openai") is None
    clock.now += 5
    assert cache.get("alice", "openai") is None


def test_the_least_recently_used_entry_goes_first(clock: Clock) -> None:
    cache = KeyCache(60, max_entries=2, clock=clock)
    cache.store("a", "openai", "ka", None, cache.ticket())
    cache.store("b", "openai", "kb", None, cache.ticket())
    assert cache.get("a", "openai") == "ka"
    cache.store("c", "openai", "kc", None, cache.ticket())

    assert len(cache) == 2
    assert cache.get("b", "openai") is None
    assert (cache.get("a", "openai"), cache.get("c", "openai")) == ("ka", "kc")


def test_a_drop_takes_every_provider_of_that_sub_only(clock: Clock) -> None:
    cache = KeyCache(60, clock=clock)
    for sub, provider in [("a", "openai"), ("a", "anthropic"), ("b", "openai")]:
        cache.store(sub, provider, f"{sub}-{provider}", None, cache.ticket())

    cache.drop("a")

    assert cache.get("a", "openai") is None
    assert cache.get("a", "anthropic") is None
    assert cache.get("b", "openai") == "b-openai"


def test_a_read_that_raced_a_drop_is_not_kept(clock: Clock) -> None:
    cache = KeyCache(60, clock=clock)
    ticket = cache.ticket()  # the read is sent ...
    cache.drop("alice")  # ... the client's own write happens ...
    cache.store("alice", "openai", "old", None, ticket)  # ... and the read's answer arrives

    assert cache.get("alice", "openai") is None


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL_SECONDS + 1])
def test_a_ttl_outside_the_bounds_is_refused(ttl: float) -> None:
    with pytest.raises(ValueError, match="cache_ttl"):
        KeyVault(URL, token="t", cache_ttl=ttl)


def test_the_cache_is_off_by_default_and_its_repr_holds_no_key(clock: Clock) -> None:
    cache = KeyCache(60, clock=clock)
    cache.store("alice", "openai", "sk-CANARY-cached", None, cache.ticket())

    assert "CANARY" not in repr(cache)
    with KeyVault(URL, token="t") as vault:
        assert vault._cache is None


@pytest.fixture
def mocked() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=URL, assert_all_called=False) as router:
        yield router


def test_an_uncached_read_is_one_request_and_a_cached_one_none(mocked: respx.MockRouter) -> None:
    route = mocked.get(KEY_PATH).mock(
        return_value=httpx.Response(200, json={"sub": "alice", "api_key": "sk-1"})
    )
    missing = mocked.get("/users/bob/api-keys/openai").mock(
        return_value=httpx.Response(
            404,
            json={"type": "https://keyvault.dev/problems/not-found"},
            headers={"Content-Type": "application/problem+json"},
        )
    )

    with KeyVault(URL, token="t", cache_ttl=60) as cached, KeyVault(URL, token="t") as plain:
        assert [cached.get_api_key("alice") for _ in range(3)] == ["sk-1"] * 3
        assert route.call_count == 1
        assert [plain.get_api_key("alice") for _ in range(2)] == ["sk-1"] * 2
        assert route.call_count == 3
        assert [cached.get_api_key("bob") for _ in range(2)] == [None, None]
        assert missing.call_count == 2  # no key is never cached: one stored elsewhere shows at once
