from __future__ import annotations

from pathlib import Path

import pytest

from keyvault.config import SEED_PLACEHOLDER, ConfigurationError, Settings, load_settings

CANARY = "CANARY-short-secret"
JWT_SECRET = "a-jwt-secret-long-enough-for-hs256-000000"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings read the process environment and ./.env; tests start from neither."""
    monkeypatch.chdir(tmp_path)
    for name in ("MASTER_ENCRYPTION_KEY", "MASTER_ENCRYPTION_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEYVAULT_JWT_SECRET", JWT_SECRET)


def test_missing_master_key_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigurationError, match="MASTER_ENCRYPTION_KEY"):
        load_settings().master_key()


def test_short_master_key_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY", CANARY)
    with pytest.raises(ConfigurationError) as raised:
        load_settings().master_key()
    assert "at least 32 characters" in str(raised.value)
    assert CANARY not in str(raised.value)


def test_seed_placeholder_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY", SEED_PLACEHOLDER)
    with pytest.raises(ConfigurationError, match="placeholder"):
        load_settings().master_key()


def test_master_key_is_read_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_file = tmp_path / "master_key"
    secret_file.write_text("file-master-key-0123456789-abcdefghijkl\n")
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY_FILE", str(secret_file))
    assert load_settings().master_key() == "file-master-key-0123456789-abcdefghijkl"


def test_unreadable_master_key_file_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_settings().master_key()


def test_master_key_is_read_from_dot_env(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MASTER_ENCRYPTION_KEY=dotenv-master-key-0123456789-abcdefgh\n")
    assert load_settings().master_key() == "dotenv-master-key-0123456789-abcdefgh"


def test_settings_repr_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY", "CANARY-master-key-0123456789-abcdefghij")
    shown = repr(load_settings()) + str(load_settings().model_dump())
    assert "CANARY" not in shown
    assert JWT_SECRET not in shown


def test_short_jwt_secret_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYVAULT_JWT_SECRET", CANARY)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "KEYVAULT_JWT_SECRET must be at least 32 characters" in str(raised.value)
    assert CANARY not in str(raised.value)


def test_no_way_to_verify_tokens_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYVAULT_JWT_SECRET")
    with pytest.raises(ConfigurationError, match="KEYVAULT_JWKS_URL"):
        load_settings()


def test_leeway_above_sixty_seconds_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYVAULT_JWT_LEEWAY_SECONDS", "61")
    with pytest.raises(ConfigurationError, match="jwt_leeway_seconds"):
        load_settings()


def test_iterations_below_the_floor_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYVAULT_KDF_ITERATIONS", "100000")
    with pytest.raises(ConfigurationError, match="kdf_iterations"):
        load_settings()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite+aiosqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
    ],
)
def test_database_url_forms_are_accepted(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    monkeypatch.setenv("KEYVAULT_DATABASE_URL", given)
    assert load_settings().database_url.get_secret_value() == expected


def test_jwks_algorithms_are_read_as_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYVAULT_JWKS_ALGORITHMS", "RS256, ES256")
    assert Settings().jwks_algorithms == ("RS256", "ES256")


def test_symmetric_jwks_algorithm_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYVAULT_JWKS_ALGORITHMS", "HS256")
    with pytest.raises(ConfigurationError, match="JWKS_ALGORITHMS"):
        load_settings()


def test_database_pool_size_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().database_pool_size == 15
    monkeypatch.setenv("KEYVAULT_DATABASE_POOL_SIZE", "40")
    assert load_settings().database_pool_size == 40


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0", "greater than or equal to 1"),
        ("-3", "greater than or equal to 1"),
        ("many", "a valid integer"),
        ("2.5", "a valid integer"),
    ],
)
def test_database_pool_size_below_one_or_not_a_number_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    monkeypatch.setenv("KEYVAULT_DATABASE_POOL_SIZE", value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert f"database_pool_size: Input should be {reason}" in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KEYVAULT_MAX_HEADER_BYTES", "1024"),
        ("KEYVAULT_MAX_HEADER_BYTES", str(2 * 1024 * 1024)),
        ("KEYVAULT_HEADER_TIMEOUT", "0"),
        ("KEYVAULT_BODY_TIMEOUT", "-1"),
        ("KEYVAULT_MAX_CONNECTIONS", "0"),
    ],
)
def test_client_bounds_out_of_range_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable.removeprefix("KEYVAULT_").lower()):
        load_settings()
