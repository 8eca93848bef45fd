"""The identity provider's signing keys (its JWKS), kept in memory and refreshed in the background.

A request never waits on a refresh while the key it needs is known: when the set is older than its
time to live, a refresh starts in the background and the known keys keep serving
(stale-while-revalidate), also for as long as the provider cannot be reached. A token naming an
unknown `kid` (the provider has rolled over to a new key, or the token is forged) refetches the set
at once, within a small burst allowance that refills slowly, so a flood of made-up key ids cannot
turn into a flood of requests to the provider. When the set cannot be fetched and the token's key
is not known, the answer is 503 (KeySetUnavailable), not a 401 that would send callers to get a
new token for nothing. A failed fetch logs one `jwks_fetch_failed` warning naming the error's type
only: its message could quote the URL, and the URL may carry credentials.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Final

import httpx
import jwt

from keyvault.errors import KeySetUnavailable, Unauthorized

log = logging.getLogger("keyvault")

FETCH_TIMEOUT_SECONDS: Final = 5.0
# Refetches an unknown kid may trigger: this many at once, then one per REFILL_SECONDS.
UNKNOWN_KID_BURST: Final = 3
UNKNOWN_KID_REFILL_SECONDS: Final = 10.0
# After a failed background refresh, the next one is tried no sooner than this.
RETRY_AFTER_FAILURE_SECONDS: Final = 10.0


class TokenBucket:
    """`capacity` tokens, one more every `refill_seconds`; `take` spends one if there is one."""

    def __init__(self, capacity: int, refill_seconds: float, clock: Callable[[], float]) -> None:
        self._capacity = capacity
        self._refill = refill_seconds
        self._clock = clock
        self._tokens = float(capacity)
        self._updated = clock()

    def take(self) -> bool:
        self._top_up()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def seconds_until_next(self) -> float:
        self._top_up()
        return max(0.0, (1 - self._tokens) * self._refill)

    def _top_up(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) / self._refill)
        self._updated = now


class JwksCache:
    def __init__(
        self,
        url: str,
        ttl_seconds: float,
        client: httpx.AsyncClient | None = None,
        *,
        timeout_seconds: float = FETCH_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._ttl = ttl_seconds
        self._client = client or httpx.AsyncClient(timeout=timeout_seconds)
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._refresh_at = float("-inf")  # when the keys held are due for a background refresh
        self._failing = False  # the last fetch failed
        self._refreshing: asyncio.Task[None] | None = None
        self._unknown_kid_refetches = TokenBucket(
            UNKNOWN_KID_BURST, UNKNOWN_KID_REFILL_SECONDS, clock
        )

    def __repr__(self) -> str:  # the URL may carry credentials
        return f"JwksCache(keys={len(self._keys)}, failing={self._failing})"

    async def key_for(self, kid: str) -> jwt.PyJWK:
        if self._keys and self._clock() >= self._refresh_at and self._refreshing is None:
            self._start_refresh()  # in the background: the request goes on with the keys held
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._refreshing is None and not self._unknown_kid_refetches.take():
            return self._missing(kid)
        refresh = self._refreshing or self._start_refresh()
        # Shielded: a request that gives up must not cancel the fetch other requests wait on.
        await asyncio.shield(refresh)
        key = self._keys.get(kid)
        return key if key is not None else self._missing(kid)

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        await self._client.aclose()

    def _missing(self, kid: str) -> jwt.PyJWK:
        if self._failing:
            wait = self._unknown_kid_refetches.seconds_until_next()
            raise KeySetUnavailable(retry_after_seconds=max(1, math.ceil(wait)))
        raise Unauthorized(
            "The bearer token's key id is not in the identity provider's key set.",
            reason="unknown_key",
        )

    def _start_refresh(self) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._refresh())
        self._refreshing = task
        return task

    async def _refresh(self) -> None:
        try:
            self._keys = await self._fetch()
            self._refresh_at = self._clock() + self._ttl
            self._failing = False
        except Exception as error:  # whatever went wrong, it runs unawaited in the background
            # Keep the keys held: an identity provider hiccup should not log everyone out.
            self._failing = True
            self._refresh_at = self._clock() + RETRY_AFTER_FAILURE_SECONDS
            log.warning(
                "the identity provider's key set could not be fetched (%s); known keys still serve",
                type(error).__name__,
                extra={"event": "jwks_fetch_failed", "error": type(error).__name__},
            )
        finally:
            self._refreshing = None

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        response = await self._client.get(self._url)
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError("a key set is a JSON object")
        key_set = jwt.PyJWKSet.from_dict(document)
        return {key.key_id: key for key in key_set if key.key_id}
