"""The password in KEYVAULT_DATABASE_URL shows in no repr, log line or error message.

A canary password is set in the URL, every way that URL can fail is provoked (no server on the
port, a database that does not exist, a URL that does not parse), and the canary is looked for in
everything the service and the CLI printed or logged.
"""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from keyvault.config import ConfigurationError, load_settings
from keyvault.web.app import create_app
from tests.cli.test_cli import keyvault, service_env
from tests.conftest import BACKENDS, POSTGRES_ADMIN_URL, make_settings

CANARY = "CANARY-db-password-5f0e2c"


def _closed_port() -> int:
    """A port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unreachable_url() -> str:
    return f"postgresql://keyvault:{CANARY}@127.0.0.1:{_closed_port()}/keyvault"


def missing_database_url() -> str:
    """The real server (its trust login ignores the password), asked for a database it lacks."""
    url = make_url(POSTGRES_ADMIN_URL).set(password=CANARY, database="keyvault_no_such_database")
    return url.render_as_string(hide_password=False)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY", "canary-test-master-key-0123456789-abcdef")
    monkeypatch.setenv("KEYVAULT_JWT_SECRET", "canary-test-jwt-secret-0123456789-abcdef")


def test_settings_never_show_the_database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYVAULT_DATABASE_URL", f"postgresql://kv:{CANARY}@db:5432/kv")
    settings = load_settings()
    shown = repr(settings) + str(settings) + str(settings.model_dump())
    shown += settings.model_dump_json() + repr(settings.database_url) + str(settings.database_url)
    assert CANARY not in shown
    assert (
        settings.database_url.get_secret_value() == f"postgresql+asyncpg://kv:{CANARY}@db:5432/kv"
    )


def test_database_url_from_a_file_is_as_hidden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "database_url"
    path.write_text(f"postgresql://kv:{CANARY}@db:5432/kv\n")
    monkeypatch.setenv("KEYVAULT_DATABASE_URL_FILE", str(path))
    settings = load_settings()
    assert CANARY not in repr(settings) + str(settings.model_dump())
    assert (
        settings.database_url.get_secret_value() == f"postgresql+asyncpg://kv:{CANARY}@db:5432/kv"
    )


@pytest.mark.parametrize(
    "url",
    [f"postgresql://kv:{CANARY}@db:port/kv", f"postgresql kv {CANARY} db"],
    ids=["bad-port", "not-a-url"],
)
def test_a_url_that_does_not_parse_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("KEYVAULT_DATABASE_URL", url)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "KEYVAULT_DATABASE_URL is not a database URL" in str(raised.value)
    assert CANARY not in "".join(traceback.format_exception(raised.value))


@pytest.mark.skipif("postgres" not in BACKENDS, reason="Postgres tests not selected")
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (unreachable_url, "cannot reach the database"),
        (missing_database_url, "database error"),
    ],
    ids=["unreachable", "no-such-database"],
)
@pytest.mark.parametrize(
    "command", [["migrate"], ["serve", "--port", "1"], ["rotate"], ["audit", "verify"]]
)
def test_cli_failing_to_connect_never_prints_the_password(
    tmp_path: Path, command: list[str], url: Callable[[], str], expected: str
) -> None:
    env = service_env(url()) | {"KEYVAULT_LOG_LEVEL": "DEBUG"}
    result = keyvault(*command, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert expected in result.stderr
    assert CANARY not in result.stdout + result.stderr


@pytest.mark.skipif("postgres" not in BACKENDS, reason="Postgres tests not selected")
@pytest.mark.parametrize("url", [unreachable_url, missing_database_url])
async def test_app_failing_to_start_never_logs_the_password(
    caplog: pytest.LogCaptureFixture, url: Callable[[], str]
) -> None:
    app = create_app(make_settings(url()))
    # DEBUG everywhere, SQLAlchemy's engine and pool loggers included.
    refused = (OSError, asyncpg.PostgresError)
    with caplog.at_level(logging.DEBUG), pytest.raises(refused) as raised:
        async with app.router.lifespan_context(app):
            pass
    assert CANARY not in caplog.text
    assert CANARY not in "".join(traceback.format_exception(raised.value))
