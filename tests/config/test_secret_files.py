"""KEYVAULT_<NAME>_FILE: any setting read from a file, as Docker and Kubernetes mount secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keyvault.config import ConfigurationError, load_settings
from tests.conftest import JWT_SECRET, MASTER_KEY


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No developer .env and no KEYVAULT_* variables: only what each test sets."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("KEYVAULT_", "MASTER_ENCRYPTION")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY", MASTER_KEY)
    return tmp_path


def secret_file(directory: Path, name: str, content: str) -> Path:
    path = directory / name
    path.write_text(content)
    return path


def test_jwt_secret_is_read_from_its_file_without_the_trailing_newline(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = secret_file(clean_environment, "jwt_secret", JWT_SECRET + "\n")
    monkeypatch.setenv("KEYVAULT_JWT_SECRET_FILE", str(path))
    settings = load_settings()
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == JWT_SECRET


def test_database_url_from_a_file_is_normalised_like_the_variable(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = secret_file(clean_environment, "database_url", "postgresql://kv:pw@db:5432/kv\n")
    monkeypatch.setenv("KEYVAULT_DATABASE_URL_FILE", str(path))
    monkeypatch.setenv("KEYVAULT_JWT_SECRET", JWT_SECRET)
    assert (
        load_settings().database_url.get_secret_value() == "postgresql+asyncpg://kv:pw@db:5432/kv"
    )


def test_a_variable_and_its_file_together_are_refused(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = secret_file(clean_environment, "jwt_secret", JWT_SECRET)
    monkeypatch.setenv("KEYVAULT_JWT_SECRET_FILE", str(path))
    monkeypatch.setenv("KEYVAULT_JWT_SECRET", JWT_SECRET)
    with pytest.raises(ConfigurationError, match="KEYVAULT_JWT_SECRET or KEYVAULT_JWT_SECRET_FILE"):
        load_settings()


def test_a_missing_file_is_named_in_one_line(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = clean_environment / "nowhere"
    monkeypatch.setenv("KEYVAULT_JWT_SECRET_FILE", str(missing))
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert (
        str(raised.value)
        == f"KEYVAULT_JWT_SECRET_FILE {missing} cannot be read: No such file or directory"
    )


def test_a_weak_secret_in_a_file_is_refused_without_echoing_it(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "canary-short-secret"
    path = secret_file(clean_environment, "jwt_secret", canary)
    monkeypatch.setenv("KEYVAULT_JWT_SECRET_FILE", str(path))
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "jwt_secret" in str(raised.value)
    assert canary not in str(raised.value)
    assert canary not in repr(raised.value)
