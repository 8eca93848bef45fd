"""The step-up policy (RFC 9470) on its own: which tokens must authenticate again, and why."""

from __future__ import annotations

import pytest

from keyvault.auth.stepup import StepUpPolicy
from keyvault.config import ConfigurationError, Settings
from keyvault.errors import InsufficientUserAuthentication
from tests.conftest import make_settings

NOW = 1_800_000_000.0
USER = frozenset({"api-key:read"})
SERVICE = frozenset({"api-key:read", "users:any"})
MFA = StepUpPolicy(
    actions=frozenset({"read"}), acr=("urn:mfa", "gold"), amr=frozenset({"mfa", "hwk"})
)
FRESH = StepUpPolicy(actions=frozenset({"read"}), max_age=300)


def _check(
    policy: StepUpPolicy,
    *,
    action: str = "read",
    scopes: frozenset[str] = USER,
    acr: str | None = None,
    amr: frozenset[str] = frozenset(),
    auth_time: int | None = None,
) -> None:
    policy.check(action, scopes=scopes, acr=acr, amr=amr, auth_time=auth_time, now=NOW)


def test_no_policy_asks_nothing() -> None:
    _check(StepUpPolicy())


def test_an_action_outside_the_policy_is_not_checked() -> None:
    _check(MFA, action="write")


@pytest.mark.parametrize(
    ("acr", "amr"),
    [
        ("urn:mfa", frozenset()),
        ("gold", frozenset()),
        (None, frozenset({"pwd", "mfa"})),
        (None, frozenset({"hwk"})),
    ],
)
def test_an_accepted_acr_or_amr_is_enough(acr: str | None, amr: frozenset[str]) -> None:
    _check(MFA, acr=acr, amr=amr)


@pytest.mark.parametrize(
    ("acr", "amr"), [(None, frozenset()), ("silver", frozenset({"pwd"})), ("1", frozenset({"otp"}))]
)
def test_a_weak_sign_in_must_step_up(acr: str | None, amr: frozenset[str]) -> None:
    with pytest.raises(InsufficientUserAuthentication) as raised:
        _check(MFA, acr=acr, amr=amr)
    challenge = raised.value.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert 'acr_values="urn:mfa gold"' in challenge
    assert "max_age" not in challenge


def test_a_recent_sign_in_passes_the_age_limit() -> None:
    _check(FRESH, auth_time=int(NOW) - 300)


@pytest.mark.parametrize("auth_time", [int(NOW) - 301, None])
def test_an_old_or_undated_sign_in_must_step_up_with_max_age(auth_time: int | None) -> None:
    with pytest.raises(InsufficientUserAuthentication) as raised:
        _check(FRESH, auth_time=auth_time)
    challenge = raised.value.headers["WWW-Authenticate"]
    assert 'max_age="300"' in challenge
    assert "acr_values" not in challenge


def test_strength_and_age_are_both_required_when_both_are_configured() -> None:
    policy = StepUpPolicy(actions=frozenset({"read"}), amr=frozenset({"mfa"}), max_age=60)
    _check(policy, amr=frozenset({"mfa"}), auth_time=int(NOW) - 10)
    with pytest.raises(InsufficientUserAuthentication):
        _check(policy, amr=frozenset({"mfa"}), auth_time=int(NOW) - 61)
    with pytest.raises(InsufficientUserAuthentication):
        _check(policy, auth_time=int(NOW) - 10)


def test_service_tokens_are_never_asked_to_step_up() -> None:
    _check(MFA, scopes=SERVICE)
    _check(FRESH, scopes=SERVICE)


def test_settings_read_comma_or_space_separated_lists() -> None:
    settings = make_settings(
        "sqlite+aiosqlite:///unused.db",
        stepup_actions="read, delete",
        stepup_acr="urn:mfa gold",
        stepup_amr="mfa,hwk",
        stepup_max_age=600,
    )
    policy = StepUpPolicy.from_settings(settings)
    assert policy == StepUpPolicy(
        actions=frozenset({"read", "delete"}),
        acr=("urn:mfa", "gold"),
        amr=frozenset({"mfa", "hwk"}),
        max_age=600,
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"stepup_actions": "read"},
        {"stepup_actions": "steal", "stepup_amr": "mfa"},
        {"stepup_actions": "read", "stepup_acr": 'gold" realm="x'},
        {"stepup_actions": "read", "stepup_max_age": -1},
    ],
)
def test_unusable_step_up_settings_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises((ValueError, ConfigurationError)):
        make_settings("sqlite+aiosqlite:///unused.db", **overrides)


def test_step_up_is_off_by_default() -> None:
    settings: Settings = make_settings("sqlite+aiosqlite:///unused.db")
    assert StepUpPolicy.from_settings(settings) == StepUpPolicy()
