"""create_app(): routes, error handlers, middleware, and the lifespan that unlocks the keyring."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from keyvault.audit.trail import AuditTrail
from keyvault.auth.jwks import JwksCache
from keyvault.auth.stepup import StepUpPolicy
from keyvault.auth.tokens import TokenVerifier
from keyvault.config import Settings, get_settings
from keyvault.crypto.records import Keyring
from keyvault.db.engine import create_engine, create_sessionmaker
from keyvault.keys.repository import RecordReader
from keyvault.keys.writes import KeyWrites
from keyvault.master_keys import rotation
from keyvault.master_keys.keyring import open_keyring, seal_opener
from keyvault.master_keys.live_keyring import LiveKeyring
from keyvault.master_keys.maintenance import STOP_SECONDS, KeyringMaintenance, Schedule
from keyvault.providers.providers_file import load_providers
from keyvault.providers.validation import KeyValidator
from keyvault.proxy.forwarding import Upstreams
from keyvault.ratelimit.limiter import RateLimiter
from keyvault.web import audit_routes, health_routes, key_routes, proxy_routes
from keyvault.web.docs import install_docs
from keyvault.web.http_methods import HeadAsGet
from keyvault.web.key_endpoints import KeyOperations
from keyvault.web.middleware import (
    AddressRateLimit,
    BodySizeLimit,
    LastResortErrors,
    RequestId,
    SecurityHeaders,
)
from keyvault.web.problems import install_error_handlers
from keyvault.web.proxy_endpoint import ProviderProxy
from keyvault.web.state import AppState
from keyvault.web.telemetry import RequestTelemetry

log = logging.getLogger("keyvault")

DESCRIPTION = """\
Keeps each user's third-party API keys, one per provider, encrypted at rest (AES-256-GCM, bound to
its owner and provider), and calls the provider with the user's key on a service's behalf
(`/proxy/{provider}/…`, so the service never holds the key), or hands a decrypted key to services
holding a bearer token with the right scope. `/users/{sub}/api-key` is the user's `openai` key,
`/users/{sub}/api-keys/{provider}` any configured provider's.

Scopes: `api-key:use` (calls through the proxy), `api-key:read`, `api-key:write`, `api-key:delete`
act on the token's own `sub`; add `users:any` to act on any user. Every error is
`application/problem+json` (RFC 9457).
"""


def create_served_app() -> KeyvaultApp:
    """The app each `keyvault serve` worker runs. Only there is the heap frozen after start-up: a
    test process builds many apps, and what it froze would never be collected."""
    # Every request logs a line or two; the JSON lines carry no thread or process names and no
    # source location, so logging need not look them up (or walk the stack) for each record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    return create_app(freeze_startup_objects=True)


class KeyvaultApp(FastAPI):
    """The FastAPI app, whose key operations are served by web.key_endpoints and whose provider
    proxy by web.proxy_endpoint.

    `keyvault` is the running service's state, from the lifespan's start until its end. The key
    routes and the proxy's are declared (web.key_routes, web.proxy_routes) but not mounted:
    KeyOperations and ProviderProxy, in the router's place at the bottom of the middleware stack,
    serve them, and `openapi()` documents them with the mounted routes, in the order the paths are
    listed.
    """

    keyvault: AppState | None = None
    documented: list[BaseRoute]
    provider_names: list[str]

    def build_middleware_stack(self) -> ASGIApp:
        # The innermost user middleware: only what they hand on meets FastAPI's exception
        # middleware and router. The key operations first: they are the most frequent requests.
        served = [
            Middleware(KeyOperations, keyvault=self, documented=key_routes.router.routes),
            Middleware(ProviderProxy, keyvault=self, documented=proxy_routes.SERVED_AS),
        ]
        self.user_middleware.extend(served)
        try:
            return super().build_middleware_stack()
        finally:
            del self.user_middleware[-len(served) :]

    def openapi(self) -> dict[str, Any]:
        if not self.openapi_schema:
            self.openapi_schema = get_openapi(
                title=self.title,
                version=self.version,
                openapi_version=self.openapi_version,
                description=self.description,
                routes=self.documented,
            )
            _name_the_providers(self.openapi_schema, self.provider_names)
        return self.openapi_schema


def create_app(
    settings: Settings | None = None,
    keyring: Keyring | None = None,
    *,
    freeze_startup_objects: bool = False,
    maintain_keyring: bool = True,
) -> KeyvaultApp:
    """The service. `keyring` lets tests skip re-deriving the root key for every app they build
    (such a keyring is kept as given: no reload, no rotation); `freeze_startup_objects` is for a
    server process (see create_served_app); `maintain_keyring` False keeps the keyring's upkeep
    (master_keys.maintenance) from running by itself: a test then runs its rounds."""
    settings = settings or get_settings()
    providers = load_providers(settings)  # a bad providers file stops here, before serving
    rate_limiter = RateLimiter.from_settings(settings)

    step_up = StepUpPolicy.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: KeyvaultApp) -> AsyncIterator[None]:
        timeouts = settings.database_timeouts()
        engine = create_engine(
            settings.database_url.get_secret_value(),
            timeouts,
            pool_size=settings.database_pool_size,
        )
        sessions = create_sessionmaker(engine)
        reader = RecordReader(engine, sessions, settings.database_pool_size, timeouts.pool)
        jwks = (
            JwksCache(settings.jwks_url, settings.jwks_cache_seconds) if settings.jwks_url else None
        )
        unlocked = keyring
        live: LiveKeyring | None = None
        audit = AuditTrail(
            settings.database_url.get_secret_value(), timeouts, lambda: _unlocked(live)
        )
        writes = KeyWrites(engine, sessions, audit)
        validator = KeyValidator(settings.provider_timeout)
        upstreams = Upstreams(providers, settings.proxy_timeout)
        # The upkeep's own engine: its rewrap walks may outlast a request's statement timeout.
        upkeep_engine = create_engine(settings.database_url.get_secret_value(), pool_size=2)
        upkeep: asyncio.Task[None] | None = None
        maintenance: KeyringMaintenance | None = None
        try:
            if unlocked is None:
                # The seal's only use: after this, no request calls it (nor the HSM).
                unlocked = await open_keyring(sessions, settings)
                log.info(
                    "keyring opened",
                    extra={
                        "event": "master_key_verified",
                        "key_id": unlocked.current.key_id,
                        "seal": settings.seal,
                    },
                )
            if keyring is None:
                upkeep_sessions = create_sessionmaker(upkeep_engine)
                opener = seal_opener(settings, unlocked)
                live = LiveKeyring(unlocked, upkeep_sessions, opener)
                schedule = Schedule(settings.root_key_rotation_days, settings.rewrap_rate)
                maintenance = KeyringMaintenance(live, upkeep_sessions, opener, schedule)
            else:
                live = LiveKeyring(unlocked)
            app.keyvault = AppState(
                sessions=sessions,
                record_reader=reader,
                record_counts=health_routes.record_counts(sessions),
                keyring=live,
                audit=audit,
                key_writes=writes,
                providers=providers,
                key_validator=validator,
                proxy=upstreams,
                proxy_max_body_bytes=settings.proxy_max_body_bytes,
                token_verifier=TokenVerifier(settings, jwks),
                rate_limiter=rate_limiter,
                step_up=step_up,
                metrics_token=settings.metrics_token,
                maintenance=maintenance,
            )
            if maintenance is not None and maintain_keyring:
                upkeep = asyncio.create_task(maintenance.run(), name="keyring upkeep")
            log.info(
                "keyvault started",
                extra={
                    "event": "startup",
                    "database": engine.dialect.name,
                    "rate_limit": settings.rate_limit or "off",
                    "rate_limit_per_address": settings.address_rate_limit or "off",
                    "rate_limit_storage": rate_limiter.storage_kind,
                    "metrics_token": settings.metrics_token is not None,
                    "providers": providers.names,
                },
            )
            await rotation.log_unconfigured_key_ids(sessions, unlocked)
            if freeze_startup_objects:
                # What start-up made (modules, schemas, the ORM, the keyring) lives as long as the
                # process; frozen, the collector never walks it again, where each full collection
                # would stop the event loop long enough to be the slowest reads.
                gc.collect()
                gc.freeze()
                # A read makes a few hundred short-lived objects: collecting the youngest generation
                # after the default 700 allocations would walk each request's live objects several
                # times over, and promote them for the older generations to walk again. The older
                # generations keep their default ratios.
                gc.set_threshold(10_000, 10, 10)
            yield
        finally:
            log.info("keyvault stopping", extra={"event": "shutdown"})
            app.keyvault = None
            if upkeep is not None and maintenance is not None:
                maintenance.stop()
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(upkeep, STOP_SECONDS)  # cancels it past that
            await writes.aclose()
            await validator.aclose()
            await upstreams.aclose()
            await reader.aclose()
            await audit.aclose()
            await rate_limiter.aclose()
            if jwks is not None:
                await jwks.aclose()
            await engine.dispose()
            await upkeep_engine.dispose()

    # Outermost first. Telemetry sits outside everything that can answer (429, 413, 503), and inside
    # RequestId so its log line carries the request id; HeadAsGet inside it, so that line says HEAD.
    # The key operations are served inside them all (KeyvaultApp.build_middleware_stack).
    edge = [
        Middleware(RequestId),
        Middleware(RequestTelemetry),
        Middleware(HeadAsGet),
        Middleware(SecurityHeaders),
        Middleware(AddressRateLimit, limiter=rate_limiter),
        Middleware(BodySizeLimit, max_bytes=settings.max_body_bytes),
        Middleware(LastResortErrors),
    ]
    # docs_url/redoc_url None: FastAPI's own pages load from CDNs; docs.py serves /docs locally.
    # FastAPI's own OpenTelemetry stays off: its spans carry the raw path, which names a user, and
    # RequestTelemetry already gives every request its metrics and log line by route template.
    app = KeyvaultApp(
        telemetry={
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        },
        title="keyvault",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        middleware=edge,
    )
    app.include_router(audit_routes.router)
    # The key operations and the proxy are documented after the audit trail's paths, as listed.
    split = len(app.routes)
    app.include_router(health_routes.router)
    install_docs(app)
    install_error_handlers(app)
    app.documented = [
        *app.routes[:split],
        *key_routes.router.routes,
        *proxy_routes.router.routes,
        *app.routes[split:],
    ]
    app.provider_names = providers.names
    return app


def _name_the_providers(schema: dict[str, Any], names: list[str]) -> None:
    """The `{provider}` path parameter takes exactly the configured providers' names."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                if parameter["in"] == "path" and parameter["name"] == "provider":
                    parameter["schema"] = {**parameter["schema"], "enum": list(names)}


def _unlocked(keyring: LiveKeyring | None) -> Keyring:
    assert keyring is not None, "the audit trail records nothing before the keyring is unlocked"
    return keyring.current
