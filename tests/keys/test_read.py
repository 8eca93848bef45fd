from __future__ import annotations

import logging

import httpx
import pytest
from sqlalchemy import select, update

from keyvault.config import Settings
from keyvault.db.engine import create_engine, create_sessionmaker, session_scope
from keyvault.db.models import ApiKeyRecord
from tests.conftest import TokenFactory, bearer, key_path

ALL = "api-key:read api-key:write api-key:delete"


async def test_reading_returns_the_decrypted_key(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    created = await client.put(
        key_path("alice"),
        json={"api_key": "sk-alice-0000000000001"},
        headers=bearer(token("alice", ALL)),
    )

    response = await client.get(key_path("alice"), headers=bearer(token("alice", "api-key:read")))

    assert response.status_code == 200
    assert response.json() == {
        "sub": "alice",
        "provider": "openai",
        "api_key": "sk-alice-0000000000001",
        "last4": "0001",
        "label": None,
        "created_at": created.json()["created_at"],
        "updated_at": created.json()["updated_at"],
        "expires_at": None,
        "version": 1,
    }
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["ETag"] == created.headers["ETag"]


async def test_reading_a_missing_key_is_404(client: httpx.AsyncClient, token: TokenFactory) -> None:
    response = await client.get(key_path("nobody"), headers=bearer(token("nobody", "api-key:read")))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


async def _copy_record(settings: Settings, source: str, target: str) -> None:
    """What an attacker with write access to the table would do: move a ciphertext between rows."""
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        async with session_scope(create_sessionmaker(engine)) as session:
            row = (
                await session.execute(
                    select(
                        ApiKeyRecord.salt,
                        ApiKeyRecord.nonce,
                        ApiKeyRecord.ciphertext,
                        ApiKeyRecord.key_id,
                    ).where(ApiKeyRecord.sub == source)
                )
            ).one()
            await session.execute(
                update(ApiKeyRecord)
                .where(ApiKeyRecord.sub == target)
                .values(
                    salt=row.salt, nonce=row.nonce, ciphertext=row.ciphertext, key_id=row.key_id
                )
            )
    finally:
        await engine.dispose()


async def test_ciphertext_swapped_onto_another_user_fails_loudly(
    client: httpx.AsyncClient,
    token: TokenFactory,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await client.put(
        key_path("alice"),
        json={"api_key": "sk-alice-CANARY-000001"},
        headers=bearer(token("alice", ALL)),
    )
    await client.put(
        key_path("mallory"),
        json={"api_key": "sk-mallory-0000000001"},
        headers=bearer(token("mallory", ALL)),
    )
    await _copy_record(settings, source="alice", target="mallory")

    with caplog.at_level(logging.ERROR, logger="keyvault"):
        response = await client.get(key_path("mallory"), headers=bearer(token("mallory", ALL)))

    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/record-undecryptable")
    assert "integrity" in response.json()["detail"]
    assert "CANARY" not in response.text
    assert any(
        "mallory" in record.getMessage() and "integrity" in record.getMessage()
        for record in caplog.records
    )
    assert "CANARY" not in caplog.text
    # Alice's own record is untouched.
    alice = await client.get(key_path("alice"), headers=bearer(token("alice", ALL)))
    assert alice.json()["api_key"] == "sk-alice-CANARY-000001"


async def test_record_under_an_unconfigured_key_id_is_a_clear_error(
    client: httpx.AsyncClient, token: TokenFactory, settings: Settings
) -> None:
    await client.put(
        key_path("alice"),
        json={"api_key": "sk-alice-0000000000001"},
        headers=bearer(token("alice", ALL)),
    )
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        async with session_scope(create_sessionmaker(engine)) as session:
            await session.execute(
                update(ApiKeyRecord)
                .where(ApiKeyRecord.sub == "alice")
                .values(key_id="00000000deadbeef")
            )
    finally:
        await engine.dispose()

    response = await client.get(key_path("alice"), headers=bearer(token("alice", ALL)))

    assert response.status_code == 500
    assert "00000000deadbeef" in response.json()["detail"]
    assert "not configured" in response.json()["detail"]
