from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import update

from keyvault.crypto.records import FORMAT_VERSION, Keyring, SealedRecord
from keyvault.db.engine import session_scope
from keyvault.db.models import ApiKeyRecord
from keyvault.keys import repository
from keyvault.master_keys import repository as master_key_repository
from keyvault.master_keys import rotation
from keyvault.master_keys.repository import RewrapCandidate
from keyvault.web.app import create_app
from tests.conftest import JWT_SECRET, bearer, key_path, make_settings, mint
from tests.deployments import (
    NEW_KEY,
    OLD_KEY,
    OTHER_KEY,
    api_key_of,
    create_deployment,
    key_id_of,
    keyring_for,
    open_all,
    open_sessions,
    store_records,
    stored_rows,
)

SUBS = [f"user-{n:04d}" for n in range(60)]


@pytest.fixture
async def rotated_database(empty_database_url: str) -> tuple[str, Keyring]:
    """A database whose records are all under OLD_KEY, now configured with NEW_KEY as current."""
    await create_deployment(empty_database_url, OLD_KEY)
    await store_records(empty_database_url, await keyring_for(empty_database_url, OLD_KEY), SUBS)
    return empty_database_url, await keyring_for(empty_database_url, NEW_KEY, OLD_KEY)


def _resealed(keyring: Keyring, candidate: RewrapCandidate) -> SealedRecord:
    opened = keyring.open(candidate.sub, candidate.provider, candidate.sealed)
    return keyring.seal(candidate.sub, candidate.provider, opened)


async def _rewrap(database_url: str, keyring: Keyring, **options: object) -> rotation.RewrapReport:
    async with open_sessions(database_url) as sessions:
        return await rotation.rewrap(sessions, keyring, **options)  # type: ignore[arg-type]


async def test_rewrap_moves_every_record_to_the_current_key(
    rotated_database: tuple[str, Keyring],
) -> None:
    database_url, keyring = rotated_database
    report = await _rewrap(database_url, keyring, batch_size=7)
    assert report.rewrapped == len(SUBS)
    assert report.remaining == {}
    new_only = await keyring_for(database_url, NEW_KEY)
    assert await open_all(database_url, new_only) == {sub: api_key_of(sub) for sub in SUBS}


async def test_rewrap_keeps_version_and_timestamps(rotated_database: tuple[str, Keyring]) -> None:
    database_url, keyring = rotated_database
    before = await stored_rows(database_url)
    await _rewrap(database_url, keyring)
    after = await stored_rows(database_url)
    for sub in SUBS:
        assert (after[sub].version, after[sub].created_at, after[sub].updated_at) == (
            before[sub].version,
            before[sub].created_at,
            before[sub].updated_at,
        )
        assert after[sub].nonce != before[sub].nonce
        assert after[sub].salt != before[sub].salt


async def test_second_rewrap_finds_nothing_to_do(rotated_database: tuple[str, Keyring]) -> None:
    database_url, keyring = rotated_database
    await _rewrap(database_url, keyring)
    assert (await _rewrap(database_url, keyring)).rewrapped == 0


async def test_dry_run_opens_every_record_and_writes_nothing(
    rotated_database: tuple[str, Keyring],
) -> None:
    database_url, keyring = rotated_database
    before = await stored_rows(database_url)
    report = await _rewrap(database_url, keyring, dry_run=True)
    assert report.rewrapped == len(SUBS)
    assert report.remaining == {keyring.previous[0].key_id: len(SUBS)}
    after = await stored_rows(database_url)
    assert {s: r.ciphertext for s, r in after.items()} == {
        s: r.ciphertext for s, r in before.items()
    }


async def test_put_landing_between_read_and_write_wins(
    rotated_database: tuple[str, Keyring],
) -> None:
    database_url, keyring = rotated_database
    async with open_sessions(database_url) as sessions:
        async with session_scope(sessions) as session:
            batch = await master_key_repository.records_to_rewrap(
                session, keyring.current.key_id, FORMAT_VERSION, after=None, limit=3, lock=False
            )
        raced = batch[1].sub
        async with session_scope(sessions) as session:
            await repository.upsert_record(
                session,
                repository.NewRecord(
                    raced, "openai", keyring.seal(raced, "openai", "sk-newer-value-0000"), "0000"
                ),
                datetime.now(UTC),
            )
        async with session_scope(sessions) as session:
            swaps = [(c, _resealed(keyring, c)) for c in batch]
            swapped = await master_key_repository.swap_sealed(session, swaps)
    assert swapped == 2
    opened = await open_all(database_url, keyring)
    assert opened[raced] == "sk-newer-value-0000"
    assert opened[batch[0].sub] == api_key_of(batch[0].sub)


async def test_second_rotator_swapping_the_same_batch_changes_nothing(
    rotated_database: tuple[str, Keyring],
) -> None:
    database_url, keyring = rotated_database
    async with open_sessions(database_url) as sessions:
        async with session_scope(sessions) as session:
            batch = await master_key_repository.records_to_rewrap(
                session, keyring.current.key_id, FORMAT_VERSION, after=None, limit=5, lock=False
            )
        results = []
        for _ in range(2):
            async with session_scope(sessions) as session:
                swaps = [(c, _resealed(keyring, c)) for c in batch]
                results.append(await master_key_repository.swap_sealed(session, swaps))
    assert results == [5, 0]


async def test_puts_racing_a_rotation_all_keep_their_value(
    rotated_database: tuple[str, Keyring],
) -> None:
    database_url, keyring = rotated_database
    settings = make_settings(database_url)
    app = create_app(settings, keyring=keyring)
    raced = SUBS[::3]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as client:

            async def put(sub: str) -> int:
                body = {"api_key": f"sk-raced-{sub}-9999"}
                token = mint(sub, "api-key:write", secret=JWT_SECRET)
                response = await client.put(key_path(sub), json=body, headers=bearer(token))
                return response.status_code

            report, *statuses = await asyncio.gather(
                _rewrap(database_url, keyring, batch_size=4), *(put(sub) for sub in raced)
            )
    assert set(statuses) == {200}
    opened = await open_all(database_url, await keyring_for(database_url, NEW_KEY))
    for sub in SUBS:
        assert opened[sub] == (f"sk-raced-{sub}-9999" if sub in raced else api_key_of(sub))
    assert isinstance(report, rotation.RewrapReport)
    assert report.rewrapped + report.changed_meanwhile <= len(SUBS)


async def test_two_rotators_at_once_rewrap_each_record_once(
    rotated_database: tuple[str, Keyring],
) -> None:
    database_url, keyring = rotated_database
    first, second = await asyncio.gather(
        _rewrap(database_url, keyring, batch_size=5), _rewrap(database_url, keyring, batch_size=5)
    )
    assert first.rewrapped + second.rewrapped == len(SUBS)
    # Each report's count of what is left is taken when that rotator finds nothing more to claim,
    # possibly while the other still holds a batch; once both are done, nothing is left.
    async with open_sessions(database_url) as sessions:
        assert await rotation.records_not_under_current_key(sessions, keyring) == {}
    assert await open_all(database_url, await keyring_for(database_url, NEW_KEY)) == {
        sub: api_key_of(sub) for sub in SUBS
    }


async def test_records_under_an_unconfigured_key_are_counted_and_left(
    empty_database_url: str,
) -> None:
    await create_deployment(empty_database_url, OTHER_KEY)
    await store_records(
        empty_database_url, await keyring_for(empty_database_url, OTHER_KEY), ["lost-1", "lost-2"]
    )
    await keyring_for(empty_database_url, OLD_KEY, OTHER_KEY)
    await store_records(empty_database_url, await keyring_for(empty_database_url, OLD_KEY), SUBS)
    keyring = await keyring_for(empty_database_url, NEW_KEY, OLD_KEY)
    other_id = await key_id_of(empty_database_url, OTHER_KEY)

    report = await _rewrap(empty_database_url, keyring)

    assert report.rewrapped == len(SUBS)
    assert report.unconfigured == {other_id: 2}
    assert report.remaining == {other_id: 2}
    assert "MASTER_ENCRYPTION_KEY_PREVIOUS may be removed" in rotation.summary(
        report, keyring, dry_run=False
    )


async def test_corrupt_record_is_reported_by_sub_and_the_rest_rewrapped(
    rotated_database: tuple[str, Keyring],
) -> None:
    database_url, keyring = rotated_database
    async with open_sessions(database_url) as sessions, session_scope(sessions) as session:
        await session.execute(
            update(ApiKeyRecord).where(ApiKeyRecord.sub == SUBS[5]).values(ciphertext=b"\x00" * 40)
        )
    report = await _rewrap(database_url, keyring)
    assert report.corrupt == [(SUBS[5], "openai")]
    assert report.rewrapped == len(SUBS) - 1
    summary = rotation.summary(report, keyring, dry_run=False)
    assert "still needed: previous key #1" in summary
    assert "by 1 records" in summary


async def test_keys_report_names_previous_keys_no_longer_needed(
    rotated_database: tuple[str, Keyring],
) -> None:
    database_url, keyring = rotated_database
    async with open_sessions(database_url) as sessions:
        before = await rotation.keys_report(sessions, keyring)
        await rotation.rewrap(sessions, keyring)
        after = await rotation.keys_report(sessions, keyring)
    old_id = keyring.previous[0].key_id
    assert before.records_by_key_id == {old_id: len(SUBS)}
    assert before.unneeded_previous == []
    assert after.records_by_key_id == {keyring.current.key_id: len(SUBS)}
    assert after.unneeded_previous == [(1, old_id)]


async def test_start_logs_an_error_for_records_under_an_unconfigured_key(
    rotated_database: tuple[str, Keyring], caplog: pytest.LogCaptureFixture
) -> None:
    database_url, keyring = rotated_database
    new_only = await keyring_for(database_url, NEW_KEY)
    app = create_app(make_settings(database_url), keyring=new_only)
    with caplog.at_level(logging.ERROR, logger="keyvault"):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://kv.test") as client:
                token = mint(SUBS[0], "api-key:read", secret=JWT_SECRET)
                response = await client.get(key_path(SUBS[0]), headers=bearer(token))
    old_id = keyring.previous[0].key_id
    assert any(
        old_id in record.getMessage() and "not configured" in record.getMessage()
        for record in caplog.records
    )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert old_id in response.json()["detail"]
    assert api_key_of(SUBS[0]) not in response.text


async def test_rewrap_covers_every_providers_keys(empty_database_url: str) -> None:
    await create_deployment(empty_database_url, OLD_KEY)
    old = await keyring_for(empty_database_url, OLD_KEY)
    await store_records(empty_database_url, old, SUBS[:5])
    await store_records(empty_database_url, old, SUBS[3:9], provider="anthropic")
    keyring = await keyring_for(empty_database_url, NEW_KEY, OLD_KEY)
    report = await _rewrap(empty_database_url, keyring, batch_size=4)
    assert (report.rewrapped, report.remaining) == (11, {})
    new_only = await keyring_for(empty_database_url, NEW_KEY)
    assert await open_all(empty_database_url, new_only) == {s: api_key_of(s) for s in SUBS[:5]}
    assert await open_all(empty_database_url, new_only, "anthropic") == {
        s: api_key_of(s) for s in SUBS[3:9]
    }
