"""A `keyvault serve` worker freezes what start-up made, so full collections skip it, and collects
its youngest objects less often; an app built any other way (tests build hundreds) leaves the
collector alone."""

from __future__ import annotations

import gc

from keyvault.config import Settings
from keyvault.crypto.records import Keyring
from keyvault.web.app import create_app


async def test_a_served_app_freezes_the_heap_once_started(
    settings: Settings, keyring: Keyring
) -> None:
    gc.unfreeze()
    thresholds = gc.get_threshold()
    app = create_app(settings, keyring=keyring, freeze_startup_objects=True)
    try:
        assert gc.get_freeze_count() == 0
        async with app.router.lifespan_context(app):
            assert gc.get_freeze_count() > 0
            assert gc.get_threshold()[0] > thresholds[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def test_an_app_built_otherwise_freezes_nothing(settings: Settings, keyring: Keyring) -> None:
    gc.unfreeze()
    thresholds = gc.get_threshold()
    app = create_app(settings, keyring=keyring)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == thresholds
