"""Asking a provider whether a key works before it is saved (`PUT …?validate=true`).

One authenticated GET of the provider's validation path with the key, over one pooled HTTP client:
a 2xx answer passes; 401 or 403 means the provider rejected the key; no connection, a timeout
(KEYVAULT_PROVIDER_TIMEOUT, for the whole call), or any other answer means it could not be
confirmed. The answer's body is never read, so nothing the provider says can be echoed, and the key
is in no log line, metric or error.
"""

from __future__ import annotations

import asyncio
import logging
from enum import StrEnum
from typing import Final

import httpx

from keyvault.errors import (
    InvalidRequest,
    KeyRejectedByProvider,
    Problem,
    ProviderTimeout,
    ProviderUnavailable,
)
from keyvault.observability.metrics import KEY_VALIDATIONS
from keyvault.providers.registry import Provider

log = logging.getLogger("keyvault")

REJECTING_STATUSES: Final = frozenset({401, 403})


class Verdict(StrEnum):
    """What a validation call found, as the audit event records it."""

    passed = "passed"
    rejected = "rejected"
    unreachable = "unreachable"
    timeout = "timeout"
    provider_error = "provider_error"  # any answer but 2xx, 401 and 403
    unsendable = "unsendable"  # the key cannot be put in a header: no call is made


def refusal(verdict: Verdict) -> Problem | None:
    """The PUT's refusal for `verdict` (None: the key passed, store it)."""
    if verdict is Verdict.passed:
        return None
    if verdict is Verdict.rejected:
        return KeyRejectedByProvider(
            "The provider rejected this key (401 or 403); nothing was stored."
        )
    if verdict is Verdict.unsendable:
        return InvalidRequest(
            "api_key: holds characters that cannot be sent in an HTTP header (only printable"
            " ASCII can), so the provider cannot check it; nothing was stored."
        )
    if verdict is Verdict.timeout:
        return ProviderTimeout(
            "The provider did not answer in time, so the key could not be checked; nothing was"
            " stored."
        )
    detail = (
        "The provider could not be reached, so the key could not be checked; nothing was stored."
        if verdict is Verdict.unreachable
        else "The provider's answer did not confirm the key; nothing was stored."
    )
    return ProviderUnavailable(detail)


class KeyValidator:
    """The process's validation calls: one pooled client, for every provider."""

    def __init__(self, timeout: float, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            transport=transport,
            headers={"user-agent": "keyvault"},
        )

    async def check(self, provider: Provider, api_key: str) -> Verdict:
        verdict = await self._ask(provider, api_key)
        KEY_VALIDATIONS.labels(provider.name, verdict.value).inc()
        return verdict

    async def _ask(self, provider: Provider, api_key: str) -> Verdict:
        if not provider.sendable(api_key):
            return Verdict.unsendable
        url = provider.url(provider.validation_path)
        try:
            async with asyncio.timeout(self._timeout):
                request = self._client.build_request(
                    "GET", url, headers=provider.key_headers(api_key)
                )
                # Streamed and closed unread: only the status line matters.
                response = await self._client.send(request, stream=True)
                await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            log.warning(
                "provider %s did not answer a key validation within %s s",
                provider.name,
                self._timeout,
                extra={"event": "key_validation_failed", "reason": "timeout"},
            )
            return Verdict.timeout
        except httpx.HTTPError as error:
            # The error's type only: its text may hold the URL, never the headers, but no more
            # than that is needed.
            log.warning(
                "provider %s could not be reached for a key validation (%s)",
                provider.name,
                type(error).__name__,
                extra={"event": "key_validation_failed", "reason": "unreachable"},
            )
            return Verdict.unreachable
        if 200 <= response.status_code < 300:
            return Verdict.passed
        if response.status_code in REJECTING_STATUSES:
            return Verdict.rejected
        log.warning(
            "provider %s answered a key validation with status %d",
            provider.name,
            response.status_code,
            extra={"event": "key_validation_failed", "reason": "provider_error"},
        )
        return Verdict.provider_error

    async def aclose(self) -> None:
        await self._client.aclose()
