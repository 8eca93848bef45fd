"""Rate limits per client address (before anything else runs) and per token subject (after auth);
keyvault.web.middleware.AddressRateLimit applies the first, the auth dependency the second.

Budgets are kept with the sliding-window counter of the `limits` library: in Redis by `limits`
itself, where every replica draws on one shared budget, or in this process's memory by
local_windows' copy of the same algorithm. Never in the database: a flood of
requests must not turn into a flood of queries. When Redis cannot be reached the limiter fails
open (requests pass, a warning is logged once) rather than take the vault down with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Final

from limits import RateLimitItem
from limits.aio.storage import RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.asyncio import ConnectionPool

from keyvault.config import REDIS_SCHEMES, Settings, parse_rate_limit
from keyvault.errors import TooManyRequests
from keyvault.observability import metrics
from keyvault.ratelimit.local_windows import LocalSlidingWindows

log = logging.getLogger("keyvault")

REDIS_TIMEOUT_SECONDS: Final = 0.25
# After Redis fails, skip it for a moment instead of paying its timeout on every request.
STORAGE_RETRY_SECONDS: Final = 1.0


class RateLimiter:
    def __init__(
        self,
        per_principal: str,
        per_address: str,
        storage_url: str = "memory://",
        key_prefix: str = "keyvault",
        per_service: str | None = None,
    ) -> None:
        self._per_principal = parse_rate_limit(per_principal)
        self._per_service = parse_rate_limit(per_principal if per_service is None else per_service)
        self._per_address = parse_rate_limit(per_address)
        self._pool: ConnectionPool | None = None
        storage: Storage | None = None
        if storage_url.startswith(REDIS_SCHEMES):
            # Our own pool, so the connections can be closed at shutdown and have short timeouts.
            self._pool = ConnectionPool.from_url(
                storage_url,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            )
            storage = RedisStorage(
                "async+" + storage_url,
                implementation="redispy",
                key_prefix=key_prefix,
                connection_pool=self._pool,  # type: ignore[arg-type]
                wrap_exceptions=True,
            )
        self.storage_kind = "redis" if self._pool is not None else "memory"
        # In memory: our own copy of the algorithm (see local_windows for why not limits' storage).
        self._shared = SlidingWindowCounterRateLimiter(storage) if storage is not None else None
        self._local = LocalSlidingWindows()
        self._storage_down_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(
            settings.rate_limit,
            settings.address_rate_limit,
            settings.rate_limit_storage.get_secret_value(),
            settings.rate_limit_key_prefix,
            settings.rate_limit_service,
        )

    @property
    def limits_addresses(self) -> bool:
        return bool(self._per_address)

    async def retry_after_for_address(self, address: str) -> int | None:
        """Seconds until this address may try again, or None when it is within its budget."""
        return await self._hit(self._per_address, "address", address)

    async def enforce_for_principal(self, sub: str, *, service: bool = False) -> None:
        """429 unless `sub` is within its budget: a service token's (`service`) is its own, larger
        one, drawn on by every replica of the service at once."""
        # Hashed: the limiter's storage (often a shared Redis) never learns who the users are.
        subject = hashlib.blake2b(sub.encode("utf-8"), digest_size=16).hexdigest()
        items, kind = (
            (self._per_service, "service") if service else (self._per_principal, "principal")
        )
        retry_after = await self._hit(items, kind, subject)
        if retry_after is not None:
            metrics.RATE_LIMITED.labels("principal").inc()
            raise TooManyRequests(
                "This caller has made too many requests; retry later.", retry_after
            )

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

    async def _hit(self, items: list[RateLimitItem], *identifiers: str) -> int | None:
        if self._shared is None:
            for item in items:
                retry_after = self._local.hit(item, *identifiers)
                if retry_after is not None:
                    return retry_after
            return None
        if not items or time.monotonic() < self._storage_down_until:
            return None
        try:
            for item in items:
                if not await self._shared.hit(item, *identifiers):
                    stats = await self._shared.get_window_stats(item, *identifiers)
                    return max(1, math.ceil(stats.reset_time - time.time()))
        except (StorageError, OSError) as error:
            self._storage_failed(error)
            return None
        if self._storage_down_until:
            self._storage_down_until = 0.0
            log.info("rate-limit storage reachable again", extra={"event": "rate_limit_storage_up"})
        return None

    def _storage_failed(self, error: Exception) -> None:
        metrics.RATE_LIMIT_STORAGE_ERRORS.inc()
        if not self._storage_down_until:
            cause = error.__cause__ if isinstance(error, StorageError) else error
            log.warning(
                "rate-limit storage unreachable (%s); requests pass unlimited until it is back",
                type(cause or error).__name__,
                extra={"event": "rate_limit_storage_down"},
            )
        self._storage_down_until = time.monotonic() + STORAGE_RETRY_SECONDS
