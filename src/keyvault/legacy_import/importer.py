"""Import from the seed application: each user's Fernet token becomes their openai key, sealed
under our master key (the seed kept one key per user, which the openai routes serve).

The seed's `user` table is read page by page in id order; its tokens are opened in worker processes
(a PBKDF2 of 100,000 iterations per row is the import's main cost, so it is spread over the cores)
and each key is sealed under the vault's current master key. Idempotent by comparing values: a vault
record that already holds the same key is skipped, one that differs and is newer than the seed row
is kept (unless `overwrite`), anything else is replaced with a compare-and-swap, so a PUT arriving
during the import wins. The seed database is only ever read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from typing import Final

from sqlalchemy import Column, MetaData, Table, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from keyvault.crypto.records import Keyring, RecordIntegrityError, UnknownKeyIdError
from keyvault.db.engine import session_scope
from keyvault.db.models import SUB_MAX_LENGTH
from keyvault.keys import repository
from keyvault.keys.repository import StoredRecord
from keyvault.keys.service import new_record
from keyvault.legacy_import.seed_crypto import (
    Opened,
    SeedToken,
    init_worker,
    open_token,
    open_tokens_in_worker,
)
from keyvault.providers.registry import OPENAI

PAGE_ROWS: Final = 256
CHUNK_ROWS: Final = 16  # rows per task handed to a worker process
# The first rows whose token reached verification: if not one of them verifies, the master key
# (or the iteration count) is wrong for every row, and the import stops before writing anything.
PROBE_ROWS: Final = 20
# Whose key the seed's keys become.
PROVIDER: Final = OPENAI

# The seed's table, as far as the import needs it. Untyped columns: the values arrive as the
# driver gives them (SQLite may hold text where Postgres holds timestamps) and are checked here.
_seed_users = Table(
    "user",
    MetaData(),
    Column("id"),
    Column("sub"),
    Column("encrypted_api_key"),
    Column("salt"),
    Column("created_at"),
    Column("updated_at"),
)


class SeedImportError(Exception):
    """The import cannot go on; the message is one line and holds no key or URL."""


@dataclass(frozen=True, slots=True)
class SeedRow:
    id: int
    sub: str
    token: str | None = field(repr=False)
    salt: object = field(repr=False)
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(slots=True)
class ImportReport:
    imported: int = 0
    without_key: int = 0
    unchanged: int = 0  # the vault already holds this very key
    kept: int = 0  # the vault's differing value is newer (or arrived during the import)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (sub, reason)

    @property
    def skipped(self) -> int:
        return self.without_key + self.unchanged

    def summary(self, *, dry_run: bool) -> str:
        counts = (
            f"imported {self.imported}, skipped {self.skipped} ({self.without_key} without a key, "
            f"{self.unchanged} already in the vault), kept {self.kept}, failed {len(self.failures)}"
        )
        return f"dry run: would have {counts}; nothing was written" if dry_run else counts


def seed_engine(database_url: str) -> AsyncEngine:
    """An engine on the seed's database, through the async drivers whatever driver the URL names."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        raise SeedImportError("--from is not a database URL") from None
    if url.drivername == "postgres":
        url = url.set(drivername="postgresql")
    drivers = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}
    if url.get_backend_name() not in drivers:
        raise SeedImportError("--from must be a postgresql:// or sqlite:/// URL")
    url = url.set(drivername=drivers[url.get_backend_name()])
    return create_async_engine(url, hide_parameters=True)


async def count_seed_rows(engine: AsyncEngine) -> int:
    async with _reading_seed(engine) as connection:
        return int(
            (await connection.execute(select(func.count()).select_from(_seed_users))).scalar_one()
        )


async def read_seed_rows(engine: AsyncEngine, after_id: int | None, limit: int) -> list[SeedRow]:
    table = _seed_users.c
    statement = (
        select(
            table.id,
            table.sub,
            table.encrypted_api_key,
            table.salt,
            table.created_at,
            table.updated_at,
        )
        .order_by(table.id)
        .limit(limit)
    )
    if after_id is not None:
        statement = statement.where(table.id > after_id)
    async with _reading_seed(engine) as connection:
        rows = (await connection.execute(statement)).all()
    return [
        SeedRow(
            row.id,
            row.sub,
            row.encrypted_api_key,
            row.salt,
            _utc(row.created_at),
            _utc(row.updated_at),
        )
        for row in rows
    ]


@asynccontextmanager
async def _reading_seed(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    try:
        async with engine.connect() as connection:
            yield connection
    except (SQLAlchemyError, OSError) as error:
        raise SeedImportError(
            f"cannot read the seed database's `user` table ({type(error).__name__}); check --from"
        ) from None


def _utc(value: object) -> datetime | None:
    """The seed stores naive UTC timestamps (CURRENT_TIMESTAMP); SQLite hands them back as text."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Decryptor:
    """Opens seed tokens: in a pool of worker processes, or in a thread when `workers` is 1."""

    def __init__(self, master_key: str, iterations: int, workers: int) -> None:
        self._master_key, self._iterations = master_key, iterations
        self._pool = (
            ProcessPoolExecutor(
                workers,
                # spawn: a forked child would inherit the event loop and open connections.
                mp_context=get_context("spawn"),
                initializer=init_worker,
                initargs=(master_key, iterations),
            )
            if workers > 1
            else None
        )

    async def open(self, tokens: list[SeedToken]) -> list[Opened]:
        if self._pool is None:
            return await asyncio.to_thread(
                lambda: [open_token(self._master_key, self._iterations, t) for t in tokens]
            )
        loop = asyncio.get_running_loop()
        chunks = [tokens[i : i + CHUNK_ROWS] for i in range(0, len(tokens), CHUNK_ROWS)]
        results = await asyncio.gather(
            *(loop.run_in_executor(self._pool, open_tokens_in_worker, chunk) for chunk in chunks)
        )
        return [opened for chunk in results for opened in chunk]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


async def import_seed(
    source: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    master_key: str,
    *,
    iterations: int,
    overwrite: bool = False,
    dry_run: bool = False,
    workers: int = 1,
    on_rows: Callable[[int], None] = lambda _rows: None,
) -> ImportReport:
    """Import every seed row; a wrong master key is detected before anything is written."""
    report = ImportReport()
    decryptor = Decryptor(master_key, iterations, workers)
    pending: list[tuple[SeedRow, Opened]] = []
    pending_rows = 0
    probe_passed = False
    after: int | None = None
    try:
        while rows := await read_seed_rows(source, after, PAGE_ROWS):
            after = rows[-1].id
            pending += await _open_page(decryptor, rows, report)
            pending_rows += len(rows)
            if not probe_passed:
                if len(_probe(pending)) < PROBE_ROWS:
                    continue  # not enough evidence yet: write nothing until there is
                _refuse_wrong_master_key(_probe(pending))
                probe_passed = True
            await _store(sessions, keyring, pending, report, overwrite=overwrite, dry_run=dry_run)
            on_rows(pending_rows)
            pending, pending_rows = [], 0
        if pending:
            _refuse_wrong_master_key(_probe(pending))
            await _store(sessions, keyring, pending, report, overwrite=overwrite, dry_run=dry_run)
        on_rows(pending_rows)
    finally:
        decryptor.close()
    return report


def _probe(pending: list[tuple[SeedRow, Opened]]) -> list[Opened]:
    return [opened for _, opened in pending if opened.verified is not None][:PROBE_ROWS]


def _refuse_wrong_master_key(probe: list[Opened]) -> None:
    if probe and all(opened.wrong_key for opened in probe):
        raise SeedImportError(
            f"none of the first {len(probe)} seed keys tried verifies with this master key: it is not the "
            "seed's master key (or --iterations is wrong); nothing was written"
        )


async def _open_page(
    decryptor: Decryptor, rows: list[SeedRow], report: ImportReport
) -> list[tuple[SeedRow, Opened]]:
    keyed = []
    for row in rows:
        if not row.token:
            report.without_key += 1
        elif (problem := _sub_problem(row.sub)) is not None:
            report.failures.append((f"id {row.id}", problem))
        else:
            keyed.append(row)
    opened = await decryptor.open([SeedToken(row.sub, row.token or "", row.salt) for row in keyed])
    return list(zip(keyed, opened, strict=True))


def _sub_problem(sub: object) -> str | None:
    if not isinstance(sub, str) or not sub:
        return "the sub is missing"
    if len(sub) > SUB_MAX_LENGTH:
        return f"the sub is longer than {SUB_MAX_LENGTH} characters"
    if any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in sub):
        return "the sub contains control characters"
    return None


async def _store(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    batch: list[tuple[SeedRow, Opened]],
    report: ImportReport,
    *,
    overwrite: bool,
    dry_run: bool,
) -> None:
    """One transaction per page; what to do with each row is decided against the vault's value."""
    usable = []
    for row, opened in batch:
        if opened.api_key is None:
            report.failures.append((row.sub, opened.failure or "unknown failure"))
        else:
            usable.append((row, opened.api_key))
    if not usable:
        return
    async with session_scope(sessions) as session:
        existing = await repository.get_records(session, [row.sub for row, _ in usable], PROVIDER)
        for row, api_key in usable:
            await _store_one(
                session, keyring, row, api_key, existing.get(row.sub), report, overwrite, dry_run
            )


async def _store_one(
    session: AsyncSession,
    keyring: Keyring,
    row: SeedRow,
    api_key: str,
    current: StoredRecord | None,
    report: ImportReport,
    overwrite: bool,
    dry_run: bool,
) -> None:
    now = datetime.now(UTC)
    if current is None:
        if not dry_run:
            created = row.created_at or now
            state = await repository.insert_imported_record(
                session,
                new_record(keyring, row.sub, PROVIDER, api_key),
                created,
                row.updated_at or created,
            )
            if state is None:  # a PUT created it meanwhile: that value is newer
                report.kept += 1
                return
        report.imported += 1
        return
    if _holds(keyring, row.sub, current, api_key):
        report.unchanged += 1
        return
    vault_is_newer = row.updated_at is None or current.state.updated_at > row.updated_at
    if vault_is_newer and not overwrite:
        report.kept += 1
        return
    if not dry_run:
        state = await repository.replace_record_if_current(
            session, new_record(keyring, row.sub, PROVIDER, api_key), current.state, now
        )
        if state is None:
            report.kept += 1
            return
    report.imported += 1


def _holds(keyring: Keyring, sub: str, current: StoredRecord, api_key: str) -> bool:
    """Whether the vault's record already holds this key; one it cannot open does not."""
    try:
        return keyring.open(sub, PROVIDER, current.sealed) == api_key
    except (UnknownKeyIdError, RecordIntegrityError):
        return False
