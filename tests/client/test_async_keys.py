"""AsyncKeyVault against the real server process, on each database: the same operations as
KeyVault, the cache, and concurrent calls over the client's one connection pool."""

from __future__ import annotations

import asyncio

import pytest

from keyvault_client import AsyncKeyVault, Conflict, KeyStatus, UnknownProvider
from tests.client.conftest import service_token
from tests.client.support import CANARY_KEY

OTHER_KEY = "sk-ant-other-key-0123456789abcdef"


def vault_at(url: str, cache_ttl: float | None = None) -> AsyncKeyVault:
    return AsyncKeyVault(url, token=service_token(), cache_ttl=cache_ttl)


async def test_every_operation_on_a_users_keys(server_url: str, sub: str) -> None:
    async with vault_at(server_url) as vault:
        assert await vault.get_api_key(sub) is None
        created = await vault.put_api_key(sub, CANARY_KEY, label="team key")
        await vault.put_api_key(sub, OTHER_KEY, "anthropic")

        assert await vault.get_api_key(sub) == CANARY_KEY
        assert await vault.get_api_key(sub, "anthropic") == OTHER_KEY
        assert await vault.status(sub) == created
        listed = await vault.list_keys(sub)
        assert await vault.delete_api_key(sub, "anthropic") is True
        assert await vault.delete_api_key(sub, "anthropic") is False
        log = [entry.action async for entry in vault.access_log(sub, page_size=3)]

    assert isinstance(created, KeyStatus)
    assert (created.version, created.label, created.provider) == (1, "team key", "openai")
    assert [key.provider for key in listed] == ["anthropic", "openai"]
    assert log == ["delete", "delete", "list", "status", "get", "get", "put", "put", "get"]


async def test_refusals_are_the_same_typed_errors(server_url: str, sub: str) -> None:
    async with vault_at(server_url) as vault:
        first = await vault.put_api_key(sub, CANARY_KEY)
        await vault.put_api_key(sub, OTHER_KEY)
        with pytest.raises(Conflict):
            await vault.put_api_key(sub, CANARY_KEY, if_match=first.etag)
        with pytest.raises(UnknownProvider):
            await vault.status(sub, "no-such-provider")


async def test_a_cached_key_costs_no_request(server_url: str, sub: str) -> None:
    async with vault_at(server_url, cache_ttl=30) as vault:
        await vault.put_api_key(sub, CANARY_KEY)
        for _ in range(3):
            assert await vault.get_api_key(sub) == CANARY_KEY
        reads = [entry.action async for entry in vault.access_log(sub)].count("get")

    assert reads == 1


async def test_concurrent_calls_share_the_client(server_url: str, sub: str) -> None:
    async with vault_at(server_url) as vault:
        await vault.put_api_key(sub, CANARY_KEY)
        keys = await asyncio.gather(*(vault.get_api_key(sub) for _ in range(10)))

    assert keys == [CANARY_KEY] * 10
