"""Fixtures of the HTTP tests."""

from __future__ import annotations

import httpx
import pytest

from keyvault.config import Settings
from keyvault.crypto.records import Keyring
from keyvault.web.app import KeyvaultApp
from tests.audit_support import PrivateService
from tests.keys.key_requests import Side, seed


@pytest.fixture
async def side(
    app: KeyvaultApp, client: httpx.AsyncClient, settings: Settings, keyring: Keyring
) -> Side:
    """The test's service over the run's database (its keys emptied), holding the two keys."""
    url = settings.database_url.get_secret_value()
    return await seed(PrivateService(app, client, url, keyring))
