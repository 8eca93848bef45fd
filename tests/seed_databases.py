"""Seed-format databases built the way the seed application builds them (see the seed design).

The Fernet key derivation is written out here with hashlib's PBKDF2, independently of
`keyvault.seed_crypto` (which uses cryptography's), so a mistake there cannot hide behind the same
mistake here.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import text

from keyvault.legacy_import.importer import seed_engine
from tests.conftest import dispose_database, fresh_database_url

SEED_MASTER_KEY = "your-super-secret-master-key-change-this-in-production"
FAST_ITERATIONS = 1_000

_CREATE_POSTGRES = """
CREATE TABLE "user" (
    id SERIAL PRIMARY KEY,
    email VARCHAR(120) UNIQUE NOT NULL,
    name VARCHAR(100) NOT NULL,
    sub VARCHAR(100) UNIQUE NOT NULL,
    encrypted_api_key TEXT,
    salt BYTEA,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)
"""
_CREATE_SQLITE = _CREATE_POSTGRES.replace("SERIAL", "INTEGER").replace("BYTEA", "BLOB")


@dataclass
class SeedUser:
    sub: str
    api_key: str | None
    token: str | None = None  # given: stored as is (corrupt rows); else made from api_key
    salt: bytes | None = None
    updated_at: datetime | None = None


def seed_token(master_key: str, salt: bytes, api_key: str, iterations: int) -> str:
    material = hashlib.pbkdf2_hmac("sha256", master_key.encode("utf-8"), salt, iterations, 32)
    key = base64.urlsafe_b64encode(material)
    return Fernet(key).encrypt(api_key.encode("utf-8")).decode("ascii")


async def create_seed_database(
    backend: str,
    tmp_dir: Path,
    users: list[SeedUser],
    *,
    master_key: str = SEED_MASTER_KEY,
    iterations: int = FAST_ITERATIONS,
) -> str:
    url = await fresh_database_url(backend, tmp_dir)
    if backend == "sqlite":
        url = url.replace("sqlite+aiosqlite:", "sqlite:")  # as an operator would write it
    engine = seed_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(_CREATE_SQLITE if backend == "sqlite" else _CREATE_POSTGRES)
            )
            for user in users:
                salt = user.salt
                token = user.token
                if token is None and user.api_key is not None:
                    salt = salt if salt is not None else os.urandom(16)
                    token = seed_token(master_key, salt, user.api_key, iterations)
                values: dict[str, object] = {
                    "email": f"{user.sub}@example.com",
                    "name": user.sub,
                    "sub": user.sub,
                    "token": token,
                    "salt": salt,
                }
                columns = "email, name, sub, encrypted_api_key, salt"
                placeholders = ":email, :name, :sub, :token, :salt"
                if user.updated_at is not None:
                    columns += ", updated_at"
                    placeholders += ", :updated_at"
                    # Naive UTC, as the seed stores it; SQLite keeps it as text.
                    naive = user.updated_at.replace(tzinfo=None)
                    values["updated_at"] = naive.isoformat(" ") if backend == "sqlite" else naive
                await connection.execute(
                    text(f'INSERT INTO "user" ({columns}) VALUES ({placeholders})'), values
                )
    finally:
        await engine.dispose()
    return url


async def drop_seed_database(url: str) -> None:
    await dispose_database(url)
