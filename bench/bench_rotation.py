"""Benchmark: rewrap throughput of `keyvault rotate` on Postgres, against a plain-UPDATE baseline.
The same rewrap moves records onto a new root key after a root-key rotation (in the running
service it is throttled to KEYVAULT_REWRAP_RATE; unthrottled here).

    python -m bench.bench_rotation [--records 100000] [--runs 3] [--batch-size 500]

Creates a throw-away database on the server (KEYVAULT_BENCH_POSTGRES_URL, an admin URL; default
the local `root` trust login), or uses the empty one given with `--database-url` (the caller then
owns and drops it; `make bench` does this, pinned to the server CPU). Seeds the records under one
master key through the repository, then per run times
  baseline  one `UPDATE api_keys SET ciphertext = ciphertext` over every row: what the database
            alone needs to rewrite them all, no crypto and no round trips;
  rewrap    `rotation.rewrap` (the loop `keyvault rotate` runs, without the process start and the
            master-key derivation) of every record to the other key; the direction alternates, so
            each run has all records to do;
and prints records/s for each, with the median over the runs; `--json` adds one `BENCH_JSON {...}`
line. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from keyvault.crypto.records import MIN_KDF_ITERATIONS, Keyring, RootKey, new_deployment_salt
from keyvault.db.engine import create_engine, create_sessionmaker, session_scope
from keyvault.db.migrations import upgrade_to_head
from keyvault.keys import repository
from keyvault.keys.service import last4_of
from keyvault.master_keys import repository as master_key_repository
from keyvault.master_keys import rotation
from keyvault.master_keys.unlock import derive_all

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
            await master_key_repository.create_deployment(session, salt, MIN_KDF_ITERATIONS, now)
        for start in range(0, records, SEED_CHUNK):
            batch = []
            for n in range(start, min(start + SEED_CHUNK, records)):
                sub, api_key = f"bench|{n:08d}", f"sk-bench-{n:08d}-{uuid.uuid4().hex}"
                sealed = keyring.seal(sub, "openai", api_key)
                batch.append(repository.NewRecord(sub, "openai", sealed, last4_of(api_key)))
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


async def measure(database_url: str, records: int, runs: int, batch_size: int) -> dict[str, Any]:
    """Seed `records` into the empty database at `database_url`, then time both, `runs` times."""
    started = time.perf_counter()
    key_a, key_b = await _seed(database_url, records)
    seed_seconds = time.perf_counter() - started
    print(f"seeded {records} records in {seed_seconds:.1f}s", flush=True)
    baseline: list[float] = []
    rewrap: list[float] = []
    for run in range(runs):
        # Each measured pass starts from the same state: no dead tuples from the previous one.
        await _vacuum(database_url)
        baseline.append(records / await _baseline(database_url))
        await _vacuum(database_url)
        # Alternate the direction so every run rewraps every record.
        keyring = Keyring(key_b, (key_a,)) if run % 2 == 0 else Keyring(key_a, (key_b,))
        rewrap.append(records / await _rewrap(database_url, keyring, batch_size, records))
        print(
            f"run {run + 1}: baseline {baseline[-1]:,.0f} rows/s, rewrap {rewrap[-1]:,.0f} records/s",
            flush=True,
        )
    return {
        "records": records,
        "runs": runs,
        "batch_size": batch_size,
        "seed_seconds": round(seed_seconds, 1),
        "baseline_rows_per_s": round(statistics.median(baseline)),
        "rewrap_records_per_s": round(statistics.median(rewrap)),
        # Per run, so that both figures of a ratio share the machine's load at that moment.
        "rewrap_over_baseline": round(
            statistics.median(r / b for r, b in zip(rewrap, baseline, strict=True)), 4
        ),
        "per_run": [
            {"baseline_rows_per_s": round(b), "rewrap_records_per_s": round(r)}
            for b, r in zip(baseline, rewrap, strict=True)
        ],
    }


async def measure_in_throwaway_database(
    admin_url: str, records: int, runs: int, batch_size: int
) -> dict[str, Any]:
    name = f"keyvault_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_dsn(admin_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        database_url = make_url(admin_url).set(database=name).render_as_string(False)
        return await measure(database_url, records, runs, batch_size)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=rotation.DEFAULT_BATCH_SIZE)
    parser.add_argument("--database-url", help="an empty Postgres database the caller drops")
    parser.add_argument("--json", action="store_true", help="end with a BENCH_JSON line")
    arguments = parser.parse_args()
    if arguments.database_url:
        work = measure(
            arguments.database_url, arguments.records, arguments.runs, arguments.batch_size
        )
    else:
        admin_url = os.environ.get("KEYVAULT_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL)
        work = measure_in_throwaway_database(
            admin_url, arguments.records, arguments.runs, arguments.batch_size
        )
    result = asyncio.run(work)
    print(
        f"median over {result['runs']} runs, {result['records']} records, batch "
        f"{result['batch_size']}: baseline (one plain UPDATE) {result['baseline_rows_per_s']:,} "
        f"rows/s; rewrap {result['rewrap_records_per_s']:,} records/s "
        f"({result['rewrap_over_baseline']}x the baseline)"
    )
    if arguments.json:
        print("BENCH_JSON " + json.dumps(result))


if __name__ == "__main__":
    main()
