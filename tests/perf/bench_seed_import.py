"""Benchmark: `keyvault import-seed` rows/s with worker processes against one process.

    python -m tests.perf.bench_seed_import [--rows 400] [--runs 3] [--workers N]

Builds a seed-format SQLite database in a temporary directory (tokens made with the seed's scheme
at its 100,000 PBKDF2 iterations) and an empty vault beside it, then per run times a dry-run
import (every token is opened, nothing is written, so every run does the same work) with one
process (the baseline) and with N worker processes (default: one per core). Prints rows/s and the
medians. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import text

from keyvault.crypto.records import MIN_KDF_ITERATIONS, new_deployment_salt
from keyvault.db.engine import create_engine, create_sessionmaker, session_scope
from keyvault.db.migrations import upgrade_to_head
from keyvault.legacy_import.importer import import_seed, seed_engine
from keyvault.legacy_import.seed_crypto import SEED_ITERATIONS, SEED_SALT_BYTES, fernet_key
from keyvault.master_keys import repository
from keyvault.master_keys.unlock import unlock

# Benchmark-only keys for throw-away databases.
SEED_KEY = "bench-seed-master-key-0123456789"
VAULT_KEY = "bench-vault-master-key-0123456789-abcdefgh"


def _seed_row(n: int) -> dict[str, object]:
    salt = os.urandom(SEED_SALT_BYTES)
    token = Fernet(fernet_key(SEED_KEY, salt)).encrypt(f"sk-bench-{n:06d}-0123456789".encode())
    return {
        "email": f"u{n}@example.com",
        "name": f"u{n}",
        "sub": f"bench|{n:06d}",
        "token": token.decode(),
        "salt": salt,
    }


async def _make_seed(url: str, rows: int) -> None:
    # PBKDF2 releases the GIL: threads make the seeding itself use every core.
    with ThreadPoolExecutor() as pool:
        values = list(pool.map(_seed_row, range(rows)))
    engine = seed_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    'CREATE TABLE "user" (id INTEGER PRIMARY KEY, email VARCHAR(120) UNIQUE NOT NULL,'
                    " name VARCHAR(100) NOT NULL, sub VARCHAR(100) UNIQUE NOT NULL,"
                    " encrypted_api_key TEXT, salt BLOB,"
                    " created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,"
                    " updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
                )
            )
            await connection.execute(
                text(
                    'INSERT INTO "user" (email, name, sub, encrypted_api_key, salt)'
                    " VALUES (:email, :name, :sub, :token, :salt)"
                ),
                values,
            )
    finally:
        await engine.dispose()


async def main(rows: int, runs: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        seed_url = f"sqlite:///{Path(directory) / 'seed.db'}"
        vault_url = f"sqlite+aiosqlite:///{Path(directory) / 'vault.db'}"
        started = time.perf_counter()
        await _make_seed(seed_url, rows)
        print(f"seeded {rows} seed rows in {time.perf_counter() - started:.1f}s")
        await asyncio.to_thread(upgrade_to_head, vault_url)
        vault, source = create_engine(vault_url), seed_engine(seed_url)
        try:
            sessions = create_sessionmaker(vault)
            async with session_scope(sessions) as session:
                now = datetime.now(UTC)
                await repository.create_deployment(
                    session, new_deployment_salt(), MIN_KDF_ITERATIONS, now
                )
            keyring = await unlock(sessions, VAULT_KEY, iterations_for_new=MIN_KDF_ITERATIONS)
            results: dict[int, list[float]] = {1: [], workers: []}
            for run in range(runs):
                for count in results:
                    started = time.perf_counter()
                    report = await import_seed(
                        source,
                        sessions,
                        keyring,
                        SEED_KEY,
                        iterations=SEED_ITERATIONS,
                        dry_run=True,
                        workers=count,
                    )
                    elapsed = time.perf_counter() - started
                    if report.imported != rows:
                        raise SystemExit(f"opened {report.imported} of {rows} rows")
                    results[count].append(rows / elapsed)
                    print(f"run {run + 1}: {count} process(es) {results[count][-1]:,.1f} rows/s")
        finally:
            await vault.dispose()
            await source.dispose()
    medians = ", ".join(
        f"{n} process(es) {statistics.median(r):,.1f} rows/s" for n, r in results.items()
    )
    print(f"median over {runs} runs, {rows} rows at {SEED_ITERATIONS} iterations: {medians}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rows, arguments.runs, max(2, arguments.workers)))
