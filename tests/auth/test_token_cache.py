from __future__ import annotations

import pytest

from keyvault.auth.token_cache import MAX_TOKEN_LENGTH, VerifiedTokenCache
from keyvault.auth.tokens import Principal, TokenVerifier
from keyvault.errors import Unauthorized
from tests.conftest import make_settings, mint

ALICE = Principal("alice", frozenset({"api-key:read"}), None)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_verified_token_is_returned_until_it_expires() -> None:
    clock = Clock()
    cache: VerifiedTokenCache[Principal] = VerifiedTokenCache(clock=clock)
    cache.put("token-a", ALICE, expires_at=clock.now + 30)

    clock.now += 29
    assert cache.get("token-a") is ALICE
    clock.now += 1
    assert cache.get("token-a") is None


def test_entry_never_outlives_max_age() -> None:
    clock = Clock()
    cache: VerifiedTokenCache[Principal] = VerifiedTokenCache(max_age_seconds=60, clock=clock)
    cache.put("token-a", ALICE, expires_at=clock.now + 3600)

    clock.now += 60
    assert cache.get("token-a") is None


def test_already_expired_token_is_not_stored() -> None:
    clock = Clock()
    cache: VerifiedTokenCache[Principal] = VerifiedTokenCache(clock=clock)
    cache.put("token-a", ALICE, expires_at=clock.now)

    assert len(cache) == 0


def test_least_recently_used_entry_is_evicted_when_full() -> None:
    clock = Clock()
    cache: VerifiedTokenCache[Principal] = VerifiedTokenCache(max_entries=2, clock=clock)
    cache.put("token-a", ALICE, expires_at=clock.now + 30)
    cache.put("token-b", ALICE, expires_at=clock.now + 30)
    cache.get("token-a")
    cache.put("token-c", ALICE, expires_at=clock.now + 30)

    assert len(cache) == 2
    assert cache.get("token-b") is None
    assert cache.get("token-a") is ALICE


def test_overlong_token_is_not_stored() -> None:
    clock = Clock()
    cache: VerifiedTokenCache[Principal] = VerifiedTokenCache(clock=clock)
    cache.put("x" * (MAX_TOKEN_LENGTH + 1), ALICE, expires_at=clock.now + 30)

    assert len(cache) == 0


def test_repr_never_shows_a_token() -> None:
    cache: VerifiedTokenCache[Principal] = VerifiedTokenCache()
    cache.put("canary-token-7f3a", ALICE, expires_at=2**40)

    assert "canary-token-7f3a" not in repr(cache)


def _verifier() -> TokenVerifier:
    return TokenVerifier(make_settings("sqlite+aiosqlite:///unused.db"))


async def test_repeated_token_gives_the_same_principal() -> None:
    verifier = _verifier()
    token = mint("alice", "api-key:read")

    first = await verifier.verify(token)
    second = await verifier.verify(token)

    assert first == second == Principal("alice", frozenset({"api-key:read"}), None)


async def test_token_with_altered_signature_is_refused_after_the_original_was_accepted() -> None:
    verifier = _verifier()
    token = mint("alice", "api-key:read")
    await verifier.verify(token)
    header, payload, signature = token.split(".")
    altered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"

    with pytest.raises(Unauthorized):
        await verifier.verify(altered)


async def test_token_with_wrong_secret_is_refused_every_time() -> None:
    verifier = _verifier()
    forged = mint("alice", "api-key:read", secret="another-secret-0123456789-abcdefghijklmnop")

    for _ in range(2):
        with pytest.raises(Unauthorized):
            await verifier.verify(forged)


async def test_expired_token_is_refused() -> None:
    verifier = _verifier()
    expired = mint("alice", "api-key:read", exp=1_000_000)

    with pytest.raises(Unauthorized, match="expired"):
        await verifier.verify(expired)
