"""Fixtures of the GET /audit tests."""

from __future__ import annotations

import pytest

from tests.audit_support import new_sub


@pytest.fixture
def unique_sub() -> str:
    return new_sub()
