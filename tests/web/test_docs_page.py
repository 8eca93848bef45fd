"""/docs in a real headless Chromium against the real server: offline, and usable end to end.

Playwright drives Debian's `chromium` (`.ci/run` installs it); it never downloads a browser.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Page, Request, Route, async_playwright

from keyvault.db.migrations import upgrade_to_head
from tests.conftest import bearer, key_path, mint
from tests.server import running_server

pytestmark = pytest.mark.server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
SUB = "docs-demo-user"
API_KEY = "sk-docs-0123456789abcdefWXYZ"
UI_TIMEOUT_MS = 30_000


def is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname in LOOPBACK_HOSTS


async def try_reading_the_key(page: Page, token: str) -> None:
    """What a person does: authorise, open the read operation, try it out for SUB, execute."""
    await page.click("button.authorize")
    await page.fill(".modal-ux input", token)
    await page.click(".modal-ux .auth-btn-wrapper button.authorize")
    await page.click(".modal-ux button.btn-done")

    operation = page.locator(".opblock-get", has=page.locator('[data-path="/users/{sub}/api-key"]'))
    await operation.locator(".opblock-summary").click()
    await operation.locator("button.try-out__btn").click()
    await operation.locator('input[placeholder="sub"]').fill(SUB)
    await operation.locator("button.execute").click()
    await operation.locator(
        ".live-responses-table tr.response .response-col_status"
    ).first.wait_for()


# CI installs chromium (.ci/run), so there a missing browser is a failure, never a skip.
@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (apt-get install chromium)",
)
async def test_docs_page_works_offline_and_reads_a_key_with_a_token(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}"
    await asyncio.to_thread(upgrade_to_head, database_url)
    token = mint(SUB, "api-key:read api-key:write")
    outside: list[str] = []

    async def only_loopback(route: Route, request: Request) -> None:
        # Recorded and refused: a CDN fetch must fail here exactly as it would on an offline host.
        if is_loopback(request.url):
            await route.continue_()
        else:
            outside.append(request.url)
            await route.abort()

    with running_server(database_url, tmp_path) as server:
        stored = httpx.put(
            f"{server.base_url}{key_path(SUB)}", json={"api_key": API_KEY}, headers=bearer(token)
        )
        assert stored.status_code == 201

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                context = await browser.new_context(viewport={"width": 1280, "height": 1400})
                context.set_default_timeout(UI_TIMEOUT_MS)
                await context.route("**/*", only_loopback)
                page = await context.new_page()
                await page.goto(f"{server.base_url}/docs", wait_until="networkidle")
                await page.locator(".swagger-ui .info .title", has_text="keyvault").wait_for()
                await try_reading_the_key(page, token)

                operation = page.locator(
                    ".opblock-get", has=page.locator('[data-path="/users/{sub}/api-key"]')
                )
                live = operation.locator(".live-responses-table")
                status = (
                    await live.locator("tr.response .response-col_status").first.inner_text()
                ).strip()
                body = await live.locator(
                    "tr.response .response-col_description"
                ).first.inner_text()
                ARTIFACTS.mkdir(exist_ok=True)
                await live.scroll_into_view_if_needed()
                await page.screenshot(path=ARTIFACTS / "docs-read-api-key.png")
                await page.screenshot(path=ARTIFACTS / "docs-full-page.png", full_page=True)
            finally:
                await browser.close()

    assert outside == []
    assert status == "200"
    assert API_KEY in body
