"""The ceiling: bare FastAPI + asyncpg doing the least the real service must do.

GET is one SELECT by sub and provider, PUT is one upsert; no auth, no crypto, no ORM, no middleware. It reads and
writes its own copy of the records table (`ceiling_api_keys`, made by the benchmark), so its writes
never touch the service's sealed rows. Started by bench/bench.py with uvicorn's factory mode:

    BENCH_CEILING_DSN=postgresql://root@127.0.0.1:5432/db uvicorn --factory bench.ceiling_app:create_app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

# The same pool size as the service (keyvault.db.DEFAULT_POOL_SIZE, no overflow).
POOL_SIZE = 15

SELECT = (
    "SELECT sub, last4, version, created_at, updated_at, ciphertext FROM ceiling_api_keys"
    " WHERE sub = $1 AND provider = 'openai'"
)
UPSERT = """
INSERT INTO ceiling_api_keys
    (sub, provider, format_version, key_id, salt, nonce, ciphertext, last4, version, created_at,
     updated_at)
VALUES ($1, 'openai', 3, 'ceiling', $2, $2, $3, right($4, 4), 1, $5, $5)
ON CONFLICT (sub, provider) DO UPDATE SET ciphertext = EXCLUDED.ciphertext, last4 = EXCLUDED.last4,
    updated_at = EXCLUDED.updated_at, version = ceiling_api_keys.version + 1
RETURNING version, created_at, updated_at
"""
ZEROS = bytes(16)


class ApiKeyWrite(BaseModel):
    api_key: str


def create_app() -> FastAPI:
    dsn = os.environ["BENCH_CEILING_DSN"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(dsn, min_size=1, max_size=POOL_SIZE)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/users/{sub}/api-keys/openai")
    async def read(sub: str, request: Request) -> dict[str, Any]:
        row = await request.app.state.pool.fetchrow(SELECT, sub)
        if row is None:
            raise HTTPException(404)
        return {
            "sub": row["sub"],
            "api_key": row["ciphertext"].hex(),
            "last4": row["last4"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "version": row["version"],
        }

    @app.put("/users/{sub}/api-keys/openai")
    async def write(sub: str, body: ApiKeyWrite, request: Request) -> dict[str, Any]:
        row = await request.app.state.pool.fetchrow(
            UPSERT, sub, ZEROS, body.api_key.encode(), body.api_key, datetime.now(UTC)
        )
        return {"sub": sub, "has_api_key": True, **dict(row)}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
