"""A user with ten keys: providers from a providers file, each key its own, listed in one answer,
and each read one primary-key lookup of one row, whatever else the user holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text

from keyvault.db.engine import create_engine
from keyvault.keys.repository import _GET_RECORD_SQL
from tests.audit_support import private_service
from tests.keys.test_provider_keys import as_, provider_path

EXTRA = [f"llm{n}" for n in range(8)]
PROVIDERS = ["openai", "anthropic", *EXTRA]


def _providers_file(directory: Path) -> Path:
    path = directory / "providers.toml"
    path.write_text(
        "".join(
            f'[providers.{name}]\nbase_url = "https://{name}.example"\nvalidation_path = "m"\n'
            for name in EXTRA
        )
    )
    return path


async def _plan(database_url: str) -> str:
    """How the database runs the read path's statement for one of the user's keys."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                # The table is tiny, where a scan is as cheap: ask for the plan an index gives.
                await connection.execute(text("SET enable_seqscan = off"))
                statement = _GET_RECORD_SQL.replace("$1", "'tess'").replace("$2", "'llm3'")
                rows = await connection.execute(text(f"EXPLAIN (FORMAT JSON) {statement}"))
                plan: Any = rows.scalar_one()
                return str(plan)
            statement = _GET_RECORD_SQL.replace("$1", "'tess'").replace("$2", "'llm3'")
            rows = await connection.execute(text(f"EXPLAIN QUERY PLAN {statement}"))
            return " ".join(str(row[-1]) for row in rows)
    finally:
        await engine.dispose()


async def test_ten_keys_each_read_by_its_primary_key(backend: str, tmp_path: Path) -> None:
    async with private_service(
        backend, tmp_path, providers_file=_providers_file(tmp_path), rate_limit=""
    ) as vault:
        for provider in PROVIDERS:
            written = await vault.client.put(
                provider_path("tess", provider),
                json={"api_key": f"sk-{provider}-0123456789", "label": provider.upper()},
                headers=as_("tess"),
            )
            assert written.status_code == 201
        for provider in PROVIDERS:
            read = await vault.client.get(provider_path("tess", provider), headers=as_("tess"))
            assert (read.json()["api_key"], read.json()["label"]) == (
                f"sk-{provider}-0123456789",
                provider.upper(),
            )
        listed = (await vault.client.get("/users/tess/api-keys", headers=as_("tess"))).json()
        assert [key["provider"] for key in listed["keys"]] == sorted(PROVIDERS)
        plan = await _plan(vault.database_url)
    if backend == "postgres":
        assert "'Node Type': 'Index Scan'" in plan, plan
        assert "'Index Name': 'pk_api_keys'" in plan, plan
        assert "'Plan Rows': 1," in plan, plan
        assert "(sub)::text = 'tess'::text) AND ((provider)::text = 'llm3'::text)" in plan, plan
    else:
        assert "USING INDEX sqlite_autoindex_api_keys_1 (sub=? AND provider=?)" in plan, plan
