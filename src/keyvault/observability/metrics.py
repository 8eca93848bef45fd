"""Prometheus metrics and their exposition. No label ever holds a sub, a token or a key.

Labels are route templates (`/users/{sub}/api-key`, never the path a caller sent), methods, status
codes, fixed reason words, configured provider names, and master key ids (a fingerprint that names a master key without
revealing it). With several worker processes, prometheus-client's multiprocess mode adds up every
worker's counters: `keyvault serve --workers N` sets PROMETHEUS_MULTIPROC_DIR for that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger("keyvault")

MULTIPROCESS_DIR_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"
RECORD_COUNTS_MAX_AGE_SECONDS: Final = 10.0
# The read path answers in milliseconds; the top buckets catch database timeouts (0.4 to 1 s).
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
AUTH_FAILURE_REASONS: Final = (
    "missing",
    "malformed",
    "expired",
    "bad_signature",
    "wrong_algorithm",
    "wrong_audience",
    "wrong_issuer",
    "wrong_type",
    "missing_claim",
    "bad_subject",
    "unknown_key",
    "invalid",
    "forbidden_scope",
    "forbidden_user",
)
DECRYPT_FAILURE_REASONS: Final = ("integrity", "unknown_key_id")

REQUESTS = Counter(
    "keyvault_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "keyvault_http_request_duration_seconds",
    "Time from receiving a request to the end of its response, by route template and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
AUTH_FAILURES = Counter(
    "keyvault_auth_failures",
    "Requests refused with 401 or 403, by reason.",
    ["reason"],
)
DECRYPT_FAILURES = Counter(
    "keyvault_decrypt_failures",
    "Stored keys that could not be opened: integrity (tampered or moved) or unknown_key_id.",
    ["reason"],
)
RATE_LIMITED = Counter(
    "keyvault_rate_limited",
    "Requests refused with 429, by what ran out of budget: address or principal.",
    ["limited"],
)
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "keyvault_rate_limit_storage_errors",
    "Rate-limit checks skipped because the limiter's storage (Redis) failed.",
)
KEY_VALIDATIONS = Counter(
    "keyvault_key_validations",
    "Keys checked with their provider on save (PUT ?validate=true), by provider and verdict.",
    ["provider", "verdict"],
)
# A provider call takes from milliseconds to minutes (a long completion, a stream).
PROXY_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
PROXY_CALLS = Counter(
    "keyvault_proxy_calls",
    "Calls through the provider proxy that got as far as the user's key, by provider, the status"
    " the caller got (the provider's, or keyvault's 413, 502, 504; 499 when the caller went away)"
    " and the audit outcome.",
    ["provider", "status", "outcome"],
)
PROXY_DURATION = Histogram(
    "keyvault_proxy_call_duration_seconds",
    "Time from sending a proxied call to the end of its answer, by provider.",
    ["provider"],
    buckets=PROXY_BUCKETS,
)
PROXY_BYTES = Counter(
    "keyvault_proxy_body_bytes",
    "Body bytes through the provider proxy, by provider and direction (request: sent to the"
    " provider; response: received from it).",
    ["provider", "direction"],
)
PROXY_UNAUDITED = Counter(
    "keyvault_proxy_unaudited",
    "Proxied calls made whose audit event could not be stored afterwards, by provider.",
    ["provider"],
)
DATABASE_UNAVAILABLE = Counter(
    "keyvault_database_unavailable",
    "Requests answered 503 because the database could not be reached or timed out.",
)

# Every reason starts at zero, so rate() and alerts work before the first failure.
for _reason in AUTH_FAILURE_REASONS:
    AUTH_FAILURES.labels(_reason)
for _reason in DECRYPT_FAILURE_REASONS:
    DECRYPT_FAILURES.labels(_reason)
for _limited in ("address", "principal"):
    RATE_LIMITED.labels(_limited)


class RecordCounts(Collector):
    """`keyvault_records{key_id}`: `count`, one GROUP BY, at scrape time, reused for a few seconds.

    Computed by whichever process answers the scrape, so it is right in multiprocess mode too. When
    the database is down the last counts stay (a scrape must not fail because of it).
    """

    def __init__(
        self,
        count: Callable[[], Awaitable[Mapping[str, int]]],
        max_age_seconds: float = RECORD_COUNTS_MAX_AGE_SECONDS,
    ) -> None:
        self._count = count
        self._max_age = max_age_seconds
        self._counts: Mapping[str, int] = {}
        self._counted_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._counted_at < self._max_age:
                return
            try:
                self._counts = await self._count()
            except Exception as error:  # whatever the database does, the scrape must answer
                log.warning(
                    "records by key id not refreshed (%s); reporting the last counts",
                    type(error).__name__,
                    extra={"event": "record_counts_failed"},
                )
            # Also after a failure: a down database is not asked again on every scrape.
            self._counted_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "keyvault_records",
            "Stored API keys, by the id of the master key that sealed them.",
            labels=["key_id"],
        )
        for key_id, count in sorted(self._counts.items()):
            family.add_metric([key_id], count)
        yield family


def render(records: RecordCounts) -> bytes:
    if os.environ.get(MULTIPROCESS_DIR_VARIABLE):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        shared = generate_latest(registry)
    else:
        shared = generate_latest(REGISTRY)
    own = CollectorRegistry(auto_describe=False)
    own.register(records)
    return shared + generate_latest(own)
