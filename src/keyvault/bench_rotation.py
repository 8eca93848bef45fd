"""Benchmark: rewrap throughput of `keyvault rotate` on Postgres, against a plain-UPDATE baseline.

    python -m keyvault.bench_rotation [--records 100000] [--runs 3] [--batch-size 500]

Creates a throw-away database on the server (KEYVAULT_BENCH_POSTGRES_URL, an admin URL; default
the local `root` trust login), seeds the records under one master key through the repository,
then per run times
  baseline  one `UPDATE api_keys SET ciphertext = ciphertext` over every row: what the database
            alone needs to rewrite them all, no crypto and no round trips;
  rewrap    `rotation.rewrap` of every record to the other key (the direction alternates, so each
            run has all records to do);
and prints records/s for each, with the median over the runs. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from keyvault import repository, rotation
from keyvault.crypto import MIN_KDF_ITERATIONS, Keyring, RootKey, new_deployment_salt
from keyvault.db import create_engine, create_sessionmaker, session_scope
from keyvault.master_keys import derive_all
from keyvault.migrations import upgrade_to_head
from keyvault.service import last4_of

DEFAULT_ADMIN_URL = "postgresql+asyncpg://root@127.0.0.1:5432/postgres"
SEED_CHUNK = 5_000
# Benchmark-only keys for a throw-away database.
KEY_A = "bench-master-key-A-0123456789-abcdefghijkl"
KEY_B = "bench-master-key-B-0123456789-abcdefghijkl"


def _dsn(url: str, database: str) -> str:
    return make_url(url).set(drivername="postgresql", database=database).render_as_string(False)


async def _seed(database_url: str, records: int) -> tuple[RootKey, RootKey]:
    await asyncio.to_thread(upgrade_to_head, database_url)
    engine = create_engine(database_url)
    sessions = create_sessionmaker(engine)
    salt = new_deployment_salt()
    key_a, key_b = await derive_all((KEY_A, KEY_B), salt, MIN_KDF_ITERATIONS)
    keyring = Keyring(key_a)
    now = datetime.now(UTC)
    try:
        async with session_scope(sessions) as session:
            await repository.create_deployment(session, salt, MIN_KDF_ITERATIONS, now)
        for start in range(0, records, SEED_CHUNK):
            batch = []
            for n in range(start, min(start + SEED_CHUNK, records)):
                sub, api_key = f"bench|{n:08d}", f"sk-bench-{n:08d}-{uuid.uuid4().hex}"
                batch.append(
                    repository.NewRecord(sub, keyring.seal(sub, api_key), last4_of(api_key))
                )
            async with session_scope(sessions) as session:
                await repository.insert_records(session, batch, now)
    finally:
        await engine.dispose()
    return key_a, key_b


async def _vacuum(database_url: str) -> None:
    engine = create_engine(database_url).execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text("VACUUM ANALYZE api_keys"))
    finally:
        await engine.dispose()


async def _baseline(database_url: str) -> float:
    engine = create_engine(database_url)
    try:
        started = time.perf_counter()
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE api_keys SET ciphertext = ciphertext"))
        return time.perf_counter() - started
    finally:
        await engine.dispose()


async def _rewrap(database_url: str, keyring: Keyring, batch_size: int, records: int) -> float:
    engine = create_engine(database_url)
    try:
        sessions = create_sessionmaker(engine)
        started = time.perf_counter()
        report = await rotation.rewrap(sessions, keyring, batch_size=batch_size)
        elapsed = time.perf_counter() - started
    finally:
        await engine.dispose()
    if report.rewrapped != records or report.remaining:
        raise SystemExit(f"rewrap did {report.rewrapped} of {records} records")
    return elapsed


async def main(records: int, runs: int, batch_size: int, admin_url: str) -> None:
    name = f"keyvault_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_dsn(admin_url, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = make_url(admin_url).set(database=name).render_as_string(False)
    try:
        started = time.perf_counter()
        key_a, key_b = await _seed(database_url, records)
        print(f"seeded {records} records in {time.perf_counter() - started:.1f}s")
        baseline, rewrap = [], []
        for run in range(runs):
            await _vacuum(database_url)
            baseline.append(records / await _baseline(database_url))
            await _vacuum(database_url)
            # Alternate the direction so every run rewraps every record.
            keyring = Keyring(key_b, (key_a,)) if run % 2 == 0 else Keyring(key_a, (key_b,))
            rewrap.append(records / await _rewrap(database_url, keyring, batch_size, records))
            print(
                f"run {run + 1}: baseline {baseline[-1]:,.0f} rows/s, rewrap {rewrap[-1]:,.0f} records/s"
            )
        print(
            f"median over {runs} runs, {records} records, batch {batch_size}: "
            f"baseline (one plain UPDATE) {statistics.median(baseline):,.0f} rows/s; "
            f"rewrap {statistics.median(rewrap):,.0f} records/s"
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=rotation.DEFAULT_BATCH_SIZE)
    arguments = parser.parse_args()
    admin_url = os.environ.get("KEYVAULT_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL)
    asyncio.run(main(arguments.records, arguments.runs, arguments.batch_size, admin_url))
