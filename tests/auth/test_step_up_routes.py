"""Step-up over HTTP: end-user tokens that fall short get RFC 9470's challenge, and it is audited."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from keyvault.crypto.records import Keyring
from keyvault.web.app import create_app
from tests.audit_support import new_sub, stored_events
from tests.conftest import bearer, key_path, make_settings, mint

ALL = "api-key:read api-key:write api-key:delete"
SERVICE = f"{ALL} users:any"
KEY = "sk-proj-abcdefghijkl1234"


@pytest.fixture
def unique_sub() -> str:
    return new_sub()


@pytest.fixture
async def strict_client(database_url: str, keyring: Keyring) -> AsyncIterator[httpx.AsyncClient]:
    """The service with step-up on for reads and deletes: MFA (acr or amr) within ten minutes."""
    settings = make_settings(
        database_url,
        stepup_actions="read,delete",
        stepup_acr="urn:keyvault:mfa",
        stepup_amr="mfa,hwk",
        stepup_max_age=600,
    )
    app = create_app(settings, keyring=keyring)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://keyvault.test"
        ) as client:
            yield client


def _user(sub: str, **claims: Any) -> dict[str, str]:
    return bearer(mint(sub, ALL, **claims))


async def test_a_password_only_token_is_challenged_to_step_up(
    strict_client: httpx.AsyncClient, unique_sub: str
) -> None:
    response = await strict_client.get(
        key_path(unique_sub), headers=_user(unique_sub, amr=["pwd"], auth_time=int(time.time()))
    )
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert 'error_description="' in challenge
    assert 'acr_values="urn:keyvault:mfa"' in challenge
    assert "max_age" not in challenge
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 401


async def test_the_access_log_line_names_step_up_as_the_reason(
    strict_client: httpx.AsyncClient, unique_sub: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyvault.access")
    await strict_client.get(key_path(unique_sub), headers=_user(unique_sub, amr=["pwd"]))

    [line] = [r for r in caplog.records if r.name == "keyvault.access"]
    assert (line.__dict__["status"], line.__dict__["reason"]) == (401, "step_up")


async def test_a_stale_sign_in_is_challenged_with_max_age(
    strict_client: httpx.AsyncClient, unique_sub: str
) -> None:
    response = await strict_client.get(
        key_path(unique_sub),
        headers=_user(unique_sub, amr=["mfa"], auth_time=int(time.time()) - 3600),
    )
    assert response.status_code == 401
    assert 'max_age="600"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "claims",
    [{"acr": "urn:keyvault:mfa"}, {"amr": ["pwd", "mfa"]}, {"amr": ["hwk"]}],
)
async def test_a_recent_multi_factor_sign_in_may_read(
    strict_client: httpx.AsyncClient, unique_sub: str, claims: dict[str, Any]
) -> None:
    headers = _user(unique_sub, auth_time=int(time.time()) - 5, **claims)
    await strict_client.put(key_path(unique_sub), json={"api_key": KEY}, headers=headers)
    response = await strict_client.get(key_path(unique_sub), headers=headers)
    assert response.status_code == 200
    assert response.json()["api_key"] == KEY


async def test_actions_outside_the_policy_need_no_step_up(
    strict_client: httpx.AsyncClient, unique_sub: str
) -> None:
    weak = _user(unique_sub)
    assert (
        await strict_client.put(key_path(unique_sub), json={"api_key": KEY}, headers=weak)
    ).status_code == 201
    assert (
        await strict_client.get(key_path(unique_sub, "/status"), headers=weak)
    ).status_code == 200
    assert (await strict_client.delete(key_path(unique_sub), headers=weak)).status_code == 401


async def test_service_tokens_are_not_affected(
    strict_client: httpx.AsyncClient, unique_sub: str
) -> None:
    service = bearer(mint("mailer", SERVICE))
    await strict_client.put(key_path(unique_sub), json={"api_key": KEY}, headers=service)
    response = await strict_client.get(key_path(unique_sub), headers=service)
    assert response.status_code == 200


async def test_scope_is_checked_before_step_up(
    strict_client: httpx.AsyncClient, unique_sub: str
) -> None:
    response = await strict_client.get(
        key_path(unique_sub), headers=bearer(mint(unique_sub, "api-key:write"))
    )
    assert response.status_code == 403


async def test_a_step_up_refusal_is_audited_with_its_actor(
    strict_client: httpx.AsyncClient, database_url: str, unique_sub: str
) -> None:
    await strict_client.get(key_path(unique_sub), headers=_user(unique_sub, amr="mfa"))
    (stored,) = await stored_events(database_url, unique_sub)
    assert (stored.event.action, stored.event.outcome, stored.event.actor) == (
        "get",
        "denied_401",
        unique_sub,
    )


async def test_malformed_step_up_claims_count_as_absent(
    strict_client: httpx.AsyncClient, unique_sub: str
) -> None:
    response = await strict_client.get(
        key_path(unique_sub),
        headers=_user(unique_sub, acr=["urn:keyvault:mfa"], amr="mfa", auth_time=True),
    )
    assert response.status_code == 401


@pytest.mark.parametrize("auth_time", [math.inf, -math.inf, math.nan])
async def test_a_non_finite_auth_time_counts_as_absent(
    strict_client: httpx.AsyncClient, unique_sub: str, auth_time: float
) -> None:
    response = await strict_client.get(
        key_path(unique_sub),
        headers=_user(unique_sub, acr="urn:keyvault:mfa", amr=["mfa"], auth_time=auth_time),
    )
    assert response.status_code == 401
    assert "insufficient_user_authentication" in response.headers["WWW-Authenticate"]
