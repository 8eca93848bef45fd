from __future__ import annotations

from pathlib import Path

import pytest

from keyvault.config import ConfigurationError
from tests.conftest import MASTER_KEY, make_settings
from tests.deployments import NEW_KEY, OLD_KEY, OTHER_KEY

WEAK_CANARY = "canary-weak-7f3a"


def test_previous_keys_come_from_the_comma_separated_variable() -> None:
    settings = make_settings("sqlite://", MASTER_ENCRYPTION_KEY_PREVIOUS=f" {OLD_KEY} ,{OTHER_KEY}")
    assert settings.previous_master_keys() == (OLD_KEY, OTHER_KEY)


def test_previous_keys_come_from_the_file_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "previous"
    path.write_text(f"{OLD_KEY}\n\n{OTHER_KEY}\n", encoding="utf-8")
    settings = make_settings("sqlite://", MASTER_ENCRYPTION_KEY_PREVIOUS_FILE=path)
    assert settings.previous_master_keys() == (OLD_KEY, OTHER_KEY)


def test_current_key_and_duplicates_are_dropped_from_previous_keys() -> None:
    settings = make_settings(
        "sqlite://", MASTER_ENCRYPTION_KEY_PREVIOUS=f"{OLD_KEY},{MASTER_KEY},{OLD_KEY}"
    )
    assert settings.previous_master_keys() == (OLD_KEY,)


def test_weak_previous_key_is_refused_by_position_without_showing_it() -> None:
    settings = make_settings("sqlite://", MASTER_ENCRYPTION_KEY_PREVIOUS=f"{NEW_KEY},{WEAK_CANARY}")
    with pytest.raises(ConfigurationError) as caught:
        settings.previous_master_keys()
    assert "MASTER_ENCRYPTION_KEY_PREVIOUS entry 2" in str(caught.value)
    assert WEAK_CANARY not in str(caught.value)


def test_previous_keys_never_appear_in_the_settings_repr() -> None:
    settings = make_settings("sqlite://", MASTER_ENCRYPTION_KEY_PREVIOUS=OLD_KEY)
    assert OLD_KEY not in repr(settings)
    assert OLD_KEY not in str(settings.model_dump())
