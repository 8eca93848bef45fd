"""create_app(): routes, error handlers, middleware, and the lifespan that unlocks the keyring."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from keyvault import api, audit_api, metrics, rotation
from keyvault.audit_trail import AuditTrail, install_audit_recording
from keyvault.auth import JwksCache, TokenVerifier
from keyvault.config import Settings, get_settings
from keyvault.crypto import Keyring
from keyvault.db import Timeouts, create_engine, create_sessionmaker
from keyvault.docs import install_docs
from keyvault.errors import install_error_handlers
from keyvault.key_writes import KeyWrites
from keyvault.master_keys import unlock
from keyvault.middleware import BodySizeLimit, LastResortErrors, RequestId, SecurityHeaders
from keyvault.ratelimit import AddressRateLimit, RateLimiter
from keyvault.repository import RecordReader
from keyvault.stepup import StepUpPolicy
from keyvault.telemetry import RequestTelemetry

log = logging.getLogger("keyvault")

DESCRIPTION = """\
Keeps each user's third-party API key encrypted at rest (AES-256-GCM, bound to its owner) and
hands the decrypted key to services holding a bearer token with the right scope.

Scopes: `api-key:read`, `api-key:write`, `api-key:delete` act on the token's own `sub`; add
`users:any` to act on any user. Every error is `application/problem+json` (RFC 9457).
"""


def create_app(settings: Settings | None = None, keyring: Keyring | None = None) -> FastAPI:
    """The service. `keyring` lets tests skip re-deriving the root key for every app they build."""
    settings = settings or get_settings()
    rate_limiter = RateLimiter.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeouts = Timeouts(
            connect=settings.database_connect_timeout,
            statement=settings.database_statement_timeout,
            pool=settings.database_pool_timeout,
        )
        engine = create_engine(settings.database_url, timeouts)
        app.state.sessions = create_sessionmaker(engine)
        app.state.record_counts = metrics.RecordCounts(app.state.sessions)
        app.state.record_reader = RecordReader(engine, app.state.sessions)
        jwks = (
            JwksCache(settings.jwks_url, settings.jwks_cache_seconds) if settings.jwks_url else None
        )
        app.state.token_verifier = TokenVerifier(settings, jwks)
        app.state.audit = AuditTrail(settings.database_url, lambda: app.state.keyring)
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
            yield
        finally:
            log.info("keyvault stopping", extra={"event": "shutdown"})
            await app.state.key_writes.aclose()
            await app.state.audit.aclose()
            await rate_limiter.aclose()
            if jwks is not None:
                await jwks.aclose()
            await engine.dispose()

    # docs_url/redoc_url None: FastAPI's own pages load from CDNs; docs.py serves /docs locally.
    app = FastAPI(
        title="keyvault",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.rate_limiter = rate_limiter
    app.state.metrics_token = settings.metrics_token
    app.state.step_up = StepUpPolicy.from_settings(settings)
    # Before api.router: the access-log path must be matched by its own route, never read as a sub.
    app.include_router(audit_api.router)
    app.include_router(api.router)
    app.include_router(metrics.router)
    install_docs(app)
    install_error_handlers(app)
    install_audit_recording(app)
    # Outermost last. Telemetry sits outside everything that can answer (429, 413, 503), and
    # inside RequestId so its log line carries the request id.
    app.add_middleware(LastResortErrors)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AddressRateLimit, limiter=rate_limiter)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestTelemetry)
    app.add_middleware(RequestId)
    return app
