"""Rate limits in memory and in the real Redis on 127.0.0.1:6379 (each test under its own prefix)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from keyvault.config import Settings
from keyvault.crypto.records import Keyring
from keyvault.web.app import create_app
from tests.conftest import bearer, key_path, make_settings, mint
from tests.prometheus import sample

REDIS_URL = "redis://127.0.0.1:6379/0"
READ = "api-key:read api-key:write"

Client = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def app_client(settings: Settings, keyring: Keyring) -> Client:
    """A running app with some settings changed, seen from a client at `address`."""

    @asynccontextmanager
    async def running(
        address: str = "10.1.1.1", **overrides: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        application = create_app(
            make_settings(settings.database_url.get_secret_value(), **overrides), keyring
        )
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application, client=(address, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as http:
                yield http

    return running


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"keyvault-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    redis = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def status(http: httpx.AsyncClient, sub: str = "alice") -> int:
    response = await http.get(key_path(sub, "/status"), headers=bearer(mint(sub, READ)))
    return response.status_code


async def test_an_address_over_its_budget_gets_429_problem_with_retry_after(
    app_client: Client,
) -> None:
    async with app_client(rate_limit="", rate_limit_per_address="3/hour") as http:
        allowed = [await status(http, f"user-{n}") for n in range(3)]
        refused = await http.get(
            key_path("user-9", "/status"), headers=bearer(mint("user-9", READ))
        )

    assert allowed == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/too-many-requests")
    assert 1 <= int(refused.headers["retry-after"]) <= 3600


async def test_each_address_has_its_own_budget(app_client: Client) -> None:
    async with app_client("10.0.0.1", rate_limit="", rate_limit_per_address="2/hour") as first:
        assert [await status(first) for _ in range(3)] == [200, 200, 429]
    async with app_client("10.0.0.2", rate_limit="", rate_limit_per_address="2/hour") as second:
        assert await status(second) == 200


async def test_a_principal_over_its_budget_gets_429_from_any_address(
    app_client: Client,
) -> None:
    async with app_client(rate_limit="2/hour", rate_limit_per_address="100/hour") as http:
        alice = [await status(http, "alice") for _ in range(3)]
        bob = await status(http, "bob")
        refused = await http.get(key_path("alice", "/status"), headers=bearer(mint("alice", READ)))

    assert alice == [200, 200, 429]
    assert bob == 200
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1


SERVICE = "api-key:read users:any"


async def test_a_service_token_has_its_own_larger_budget_on_every_read(
    app_client: Client,
) -> None:
    service = bearer(mint("svc-billing", SERVICE))
    limits = {"rate_limit": "2/hour", "rate_limit_service": "6/hour", "rate_limit_per_address": ""}
    async with app_client(**limits) as http:
        # Key reads (404: no key) and status reads draw on the same budget.
        answers = [
            (await http.get(key_path("alice", suffix), headers=service)).status_code
            for suffix in ("", "/status", "", "/status", "", "/status", "")
        ]
        user = [await status(http, "svc-billing") for _ in range(3)]

    assert answers == [404, 200, 404, 200, 404, 200, 429]
    assert user == [200, 200, 429], "the same sub without users:any draws on a user's budget"


def test_the_service_budget_defaults_to_ten_times_a_users(database_url: str) -> None:
    settings = make_settings(database_url)
    assert (settings.rate_limit, settings.rate_limit_service) == ("600/minute", "6000/minute")


async def test_several_limits_apply_together(app_client: Client) -> None:
    async with app_client(rate_limit="", rate_limit_per_address="1000/second;2/hour") as http:
        assert [await status(http) for _ in range(3)] == [200, 200, 429]


async def test_health_readiness_and_metrics_are_never_limited(app_client: Client) -> None:
    async with app_client(rate_limit="1/hour") as http:
        answers = [
            (await http.get(path)).status_code
            for path in ("/healthz", "/readyz", "/metrics")
            for _ in range(3)
        ]

    assert answers == [200] * 9


async def test_an_empty_rate_limit_disables_limiting(app_client: Client) -> None:
    async with app_client(rate_limit="") as http:
        answers = [await status(http) for _ in range(30)]

    assert answers == [200] * 30


async def test_refusals_are_counted_by_what_was_limited(app_client: Client) -> None:
    async with app_client(rate_limit="1/hour", rate_limit_per_address="100/hour") as http:
        before = sample(
            (await http.get("/metrics")).text, "keyvault_rate_limited_total", limited="principal"
        )
        await status(http)
        await status(http)
        after = sample(
            (await http.get("/metrics")).text, "keyvault_rate_limited_total", limited="principal"
        )

    assert after == before + 1


@pytest.mark.parametrize("value", ["lots", "600/fortnight", "-1/hour"])
def test_a_rate_limit_that_does_not_parse_is_refused(database_url: str, value: str) -> None:
    with pytest.raises(ValueError, match="600/minute"):
        make_settings(database_url, rate_limit=value)


def test_only_memory_and_redis_storage_are_accepted(database_url: str) -> None:
    with pytest.raises(ValueError, match="redis://"):
        make_settings(database_url, rate_limit_storage="memcached://127.0.0.1:11211")


async def test_two_instances_sharing_redis_share_one_budget(
    app_client: Client, redis_prefix: str
) -> None:
    shared = {
        "rate_limit": "3/hour",
        "rate_limit_per_address": "",
        "rate_limit_storage": REDIS_URL,
        "rate_limit_key_prefix": redis_prefix,
    }
    async with app_client(**shared) as first, app_client(**shared) as second:
        answers = [
            await status(first),
            await status(second),
            await status(first),
            await status(second),
            await status(first),
        ]

    assert answers == [200, 200, 200, 429, 429]
    redis = Redis.from_url(REDIS_URL)
    try:
        stored = [key async for key in redis.scan_iter(match=f"{redis_prefix}:*")]
    finally:
        await redis.aclose()
    assert stored, "the budget lives in Redis"
    assert not any(b"alice" in key for key in stored), "subjects are hashed before they reach Redis"


async def test_addresses_share_one_budget_across_instances_in_redis(
    app_client: Client, redis_prefix: str
) -> None:
    shared = {
        "rate_limit": "",
        "rate_limit_per_address": "2/hour",
        "rate_limit_storage": REDIS_URL,
        "rate_limit_key_prefix": redis_prefix,
    }
    async with app_client(**shared) as first, app_client(**shared) as second:
        answers = [await status(first), await status(second), await status(first)]

    assert answers == [200, 200, 429]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_unreachable_redis_fails_open_with_one_warning(
    app_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = f"redis://127.0.0.1:{_closed_port()}/0"
    async with app_client(rate_limit="1/hour", rate_limit_storage=unreachable) as http:
        answers = [await status(http) for _ in range(5)]

    assert answers == [200] * 5
    warnings = [r for r in caplog.records if r.__dict__.get("event") == "rate_limit_storage_down"]
    assert len(warnings) == 1
