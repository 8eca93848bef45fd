"""Fixtures of the provider proxy's tests: a fake provider per module, and the service over the
run's database with its providers pointed there, spoken to over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from keyvault.crypto.records import Keyring
from tests.fake_provider import FakeProvider, fake_provider
from tests.web.proxy_support import proxy_service


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with fake_provider() as provider:
        yield provider


@pytest.fixture
async def http(
    database_url: str, keyring: Keyring, fake: FakeProvider
) -> AsyncIterator[httpx.AsyncClient]:
    async with proxy_service(database_url, keyring, fake) as (_, client):
        yield client
