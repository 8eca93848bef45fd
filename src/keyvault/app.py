"""create_app(): routes, error handlers, middleware, and the lifespan that unlocks the keyring."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from keyvault import api
from keyvault.auth import JwksCache, TokenVerifier
from keyvault.config import Settings, get_settings
from keyvault.crypto import Keyring
from keyvault.db import create_engine, create_sessionmaker
from keyvault.errors import install_error_handlers
from keyvault.master_keys import unlock
from keyvault.middleware import BodySizeLimit, LastResortErrors, RequestId, SecurityHeaders
from keyvault.repository import RecordReader

DESCRIPTION = """\
Keeps each user's third-party API key encrypted at rest (AES-256-GCM, bound to its owner) and
hands the decrypted key to services holding a bearer token with the right scope.

Scopes: `api-key:read`, `api-key:write`, `api-key:delete` act on the token's own `sub`; add
`users:any` to act on any user. Every error is `application/problem+json` (RFC 9457).
"""


def create_app(settings: Settings | None = None, keyring: Keyring | None = None) -> FastAPI:
    """The service. `keyring` lets tests skip re-deriving the root key for every app they build."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url)
        app.state.sessions = create_sessionmaker(engine)
        app.state.record_reader = RecordReader(engine, app.state.sessions)
        jwks = (
            JwksCache(settings.jwks_url, settings.jwks_cache_seconds) if settings.jwks_url else None
        )
        app.state.token_verifier = TokenVerifier(settings, jwks)
        try:
            app.state.keyring = keyring or await unlock(
                app.state.sessions,
                settings.master_key(),
                iterations_for_new=settings.kdf_iterations,
            )
            yield
        finally:
            if jwks is not None:
                await jwks.aclose()
            await engine.dispose()

    app = FastAPI(title="keyvault", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.include_router(api.router)
    install_error_handlers(app)
    app.add_middleware(LastResortErrors)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestId)
    return app
