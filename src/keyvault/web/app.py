"""create_app(): routes, error handlers, middleware, and the lifespan that unlocks the keyring."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware import Middleware
from starlette.types import Receive, Scope, Send

from keyvault.audit.trail import AuditTrail, install_audit_recording
from keyvault.auth.jwks import JwksCache
from keyvault.auth.stepup import StepUpPolicy
from keyvault.auth.tokens import TokenVerifier
from keyvault.config import Settings, get_settings
from keyvault.crypto.records import Keyring
from keyvault.db.engine import create_engine, create_sessionmaker
from keyvault.keys.repository import RecordReader
from keyvault.keys.writes import KeyWrites
from keyvault.master_keys import rotation
from keyvault.master_keys.unlock import unlock
from keyvault.ratelimit.limiter import RateLimiter
from keyvault.web import audit_routes as audit_api
from keyvault.web import key_routes as api
from keyvault.web import metrics_route
from keyvault.web.docs import install_docs
from keyvault.web.http_methods import HeadAsGet
from keyvault.web.middleware import (
    AddressRateLimit,
    BodySizeLimit,
    LastResortErrors,
    RequestId,
    SecurityHeaders,
)
from keyvault.web.problems import install_error_handlers
from keyvault.web.read_path import ReadPath
from keyvault.web.telemetry import RequestTelemetry
from keyvault.web.write_path import WritePath

log = logging.getLogger("keyvault")

DESCRIPTION = """\
Keeps each user's third-party API key encrypted at rest (AES-256-GCM, bound to its owner) and
hands the decrypted key to services holding a bearer token with the right scope.

Scopes: `api-key:read`, `api-key:write`, `api-key:delete` act on the token's own `sub`; add
`users:any` to act on any user. Every error is `application/problem+json` (RFC 9457).
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
    """The FastAPI app, with the key read's short path (keyvault.read_path) in front of it; the
    key write's (keyvault.write_path) is its innermost middleware."""

    read_path: ReadPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.read_path is None or not await self.read_path.serve(scope, receive, send):
            await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    keyring: Keyring | None = None,
    *,
    short_paths: bool = True,
    freeze_startup_objects: bool = False,
) -> KeyvaultApp:
    """The service. `keyring` lets tests skip re-deriving the root key for every app they build;
    `short_paths=False` sends every read and write through FastAPI, for tests comparing the two;
    `freeze_startup_objects` is for a server process (see create_served_app)."""
    settings = settings or get_settings()
    rate_limiter = RateLimiter.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeouts = settings.database_timeouts()
        engine = create_engine(
            settings.database_url.get_secret_value(),
            timeouts,
            pool_size=settings.database_pool_size,
        )
        app.state.sessions = create_sessionmaker(engine)
        app.state.record_counts = metrics_route.record_counts(app.state.sessions)
        app.state.record_reader = RecordReader(
            engine,
            app.state.sessions,
            settings.database_pool_size,
            timeouts.pool,
        )
        jwks = (
            JwksCache(settings.jwks_url, settings.jwks_cache_seconds) if settings.jwks_url else None
        )
        app.state.token_verifier = TokenVerifier(settings, jwks)
        app.state.audit = AuditTrail(
            settings.database_url.get_secret_value(), timeouts, lambda: app.state.keyring
        )
        app.state.key_writes = KeyWrites(engine, app.state.sessions, app.state.audit)
        try:
            if keyring is None:
                app.state.keyring = await unlock(
                    app.state.sessions,
                    settings.master_key(),
                    iterations_for_new=settings.kdf_iterations,
                    previous=settings.previous_master_keys(),
                )
                log.info(
                    "master key verified",
                    extra={
                        "event": "master_key_verified",
                        "key_id": app.state.keyring.current.key_id,
                    },
                )
            else:
                app.state.keyring = keyring
            log.info(
                "keyvault started",
                extra={
                    "event": "startup",
                    "database": engine.dialect.name,
                    "rate_limit": settings.rate_limit or "off",
                    "rate_limit_per_address": settings.address_rate_limit or "off",
                    "rate_limit_storage": rate_limiter.storage_kind,
                    "metrics_token": settings.metrics_token is not None,
                },
            )
            await rotation.log_unconfigured_key_ids(app.state.sessions, app.state.keyring)
            if freeze_startup_objects:
                # What start-up made (modules, schemas, the ORM, the keyring) lives as long as the
                # process; frozen, the collector never walks it again. Unfrozen, each full
                # collection walked it all and stopped the event loop for 100 ms and more, the
                # slowest 1% of reads (README, Performance).
                gc.collect()
                gc.freeze()
                # A read makes a few hundred short-lived objects: collecting the youngest generation
                # after 700 allocations (the default) walked each request's live objects several
                # times over, and promoted them for the older generations to walk again. Every
                # 10,000 costs 2-3% less CPU per read (README, Performance). The older generations
                # keep their default ratios: each is collected after 10 collections of the one below.
                gc.set_threshold(10_000, 10, 10)
            yield
        finally:
            log.info("keyvault stopping", extra={"event": "shutdown"})
            await app.state.key_writes.aclose()
            await app.state.record_reader.aclose()
            await app.state.audit.aclose()
            await rate_limiter.aclose()
            if jwks is not None:
                await jwks.aclose()
            await engine.dispose()

    # Outermost first. Telemetry sits outside everything that can answer (429, 413, 503), and inside
    # RequestId so its log line carries the request id; HeadAsGet inside it, so that line says HEAD.
    # ReadPath wraps its endpoint in these too; WritePath goes inside them all.
    edge = [
        Middleware(RequestId),
        Middleware(RequestTelemetry),
        Middleware(HeadAsGet),
        Middleware(SecurityHeaders),
        Middleware(AddressRateLimit, limiter=rate_limiter),
        Middleware(BodySizeLimit, max_bytes=settings.max_body_bytes),
        Middleware(LastResortErrors),
    ]
    write_path = [Middleware(WritePath, route=_route_of(api.put_api_key))] if short_paths else []
    # docs_url/redoc_url None: FastAPI's own pages load from CDNs; docs.py serves /docs locally.
    app = KeyvaultApp(
        title="keyvault",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        middleware=[*edge, *write_path],
    )
    app.state.rate_limiter = rate_limiter
    app.state.metrics_token = settings.metrics_token
    app.state.step_up = StepUpPolicy.from_settings(settings)
    # Before api.router: the access-log path must be matched by its own route, never read as a sub.
    app.include_router(audit_api.router)
    app.include_router(api.router)
    app.include_router(metrics_route.router)
    install_docs(app)
    install_error_handlers(app)
    install_audit_recording(app)
    app.read_path = ReadPath(app, _route_of(api.read_api_key), edge) if short_paths else None
    return app


def _route_of(endpoint: Callable[..., Any]) -> APIRoute:
    return next(
        route
        for route in api.router.routes
        if isinstance(route, APIRoute) and route.endpoint is endpoint
    )
