"""/readyz under the pkcs11 seal (SoftHSM2): 503 until the keyring is open, and for good when the
seal refuses; 200 once it is."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from keyvault.db.migrations import upgrade_to_head
from keyvault.master_keys.seals import SealError
from keyvault.web.app import KeyvaultApp, create_app
from tests.softhsm import SoftHsm


async def _readyz(app: KeyvaultApp) -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyvault.test") as client:
        return (await client.get("/readyz")).status_code


async def test_ready_only_once_the_hsm_opened_the_keyring(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    app = create_app(softhsm.settings(empty_database_url, hsm_key))

    assert await _readyz(app) == 503
    async with app.router.lifespan_context(app):
        assert await _readyz(app) == 200
    assert await _readyz(app) == 503


async def test_never_ready_when_the_seal_refuses(
    softhsm: SoftHsm, hsm_key: str, empty_database_url: str
) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_database_url)
    wrong_pin = dataclasses.replace(softhsm, pin="wrong-pin-canary-19af")
    app = create_app(wrong_pin.settings(empty_database_url, hsm_key))

    with pytest.raises(SealError) as raised:
        async with app.router.lifespan_context(app):
            pass

    assert softhsm.pin not in str(raised.value)
    assert "wrong-pin-canary-19af" not in str(raised.value)
    assert await _readyz(app) == 503
