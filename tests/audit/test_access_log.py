"""GET /users/{sub}/api-key/access-log: the owner sees who used their key, and when."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from tests.audit_support import new_sub
from tests.conftest import TokenFactory, bearer, key_path

ALL = "api-key:read api-key:write api-key:delete"
SERVICE = "api-key:read users:any"


@pytest.fixture
def unique_sub() -> str:
    return new_sub()


async def _log(
    client: httpx.AsyncClient, sub: str, token_value: str, **params: Any
) -> httpx.Response:
    return await client.get(
        key_path(sub, "/access-log"), params=params, headers=bearer(token_value)
    )


async def test_owner_sees_who_read_their_key_and_when(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    await client.put(
        key_path(unique_sub),
        json={"api_key": "sk-0123456789abcdef"},
        headers=bearer(token(unique_sub, ALL)),
    )
    await client.get(
        key_path(unique_sub), headers=bearer(token("mailer", SERVICE, azp="mailer-svc"))
    )
    await client.get(key_path(unique_sub), headers=bearer(token("snoop", ALL)))

    response = await _log(client, unique_sub, token(unique_sub, "api-key:read"))
    assert response.status_code == 200
    events = response.json()["events"]
    assert [(e["actor"], e["client_id"], e["action"], e["outcome"]) for e in events] == [
        ("snoop", None, "get", "denied_403"),
        ("mailer", "mailer-svc", "get", "ok"),
        (unique_sub, None, "put", "ok"),
    ]
    assert set(events[0]) == {
        "occurred_at",
        "actor",
        "client_id",
        "provider",
        "action",
        "path",
        "outcome",
    }


async def test_any_api_key_scope_of_the_owner_will_do(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    response = await _log(client, unique_sub, token(unique_sub, "api-key:delete"))
    assert response.status_code == 200
    assert response.json() == {"events": [], "next_cursor": None}


async def test_another_user_cannot_see_the_log(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    response = await _log(client, unique_sub, token("mallory", ALL))
    assert response.status_code == 403


async def test_a_token_without_any_api_key_scope_cannot_see_the_log(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    response = await _log(client, unique_sub, token(unique_sub, "audit:read"))
    assert response.status_code == 403


async def test_a_service_with_users_any_can_see_any_log(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    response = await _log(client, unique_sub, token("support-tool", SERVICE))
    assert response.status_code == 200


async def test_no_token_no_log(client: httpx.AsyncClient, unique_sub: str) -> None:
    response = await client.get(key_path(unique_sub, "/access-log"))
    assert response.status_code == 401


async def test_the_log_pages_newest_first(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    owner = token(unique_sub, ALL)
    for _ in range(3):
        await client.get(key_path(unique_sub, "/status"), headers=bearer(owner))
    first = (await _log(client, unique_sub, owner, limit=2)).json()
    second = (await _log(client, unique_sub, owner, limit=2, cursor=first["next_cursor"])).json()
    assert len(first["events"]) == 2
    assert len(second["events"]) == 1
    assert second["next_cursor"] is None
    times = [e["occurred_at"] for e in first["events"] + second["events"]]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize("sub", ["team/alice", "bob/api-key", "x/api-key/status"])
async def test_subs_with_slashes_reach_their_own_log(
    client: httpx.AsyncClient, token: TokenFactory, sub: str
) -> None:
    owner = token(sub, ALL)
    await client.put(key_path(sub), json={"api_key": "sk-0123456789abcdef"}, headers=bearer(owner))
    response = await _log(client, sub, owner)
    assert response.status_code == 200
    assert [e["action"] for e in response.json()["events"]][:1] == ["put"]
    await client.delete(key_path(sub), headers=bearer(owner))


async def test_a_sub_that_looks_like_a_log_path_still_reaches_its_key(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    sub = "carol/api-key/access-log"
    owner = bearer(token(sub, ALL))
    await client.put(key_path(sub), json={"api_key": "sk-0123456789abcdef"}, headers=owner)
    read = await client.get(key_path(sub), headers=owner)
    assert read.status_code == 200
    assert read.json()["sub"] == sub


def _cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor_of(f"seq:{2**63}"),
        _cursor_of("seq:" + "9" * 40),
        _cursor_of("seq:-5"),
        _cursor_of("seq:5") + "!!",
        "",
    ],
)
async def test_the_owner_gets_422_for_a_cursor_the_service_did_not_issue(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str, cursor: str
) -> None:
    owner = token(unique_sub, ALL)
    await client.get(key_path(unique_sub, "/status"), headers=bearer(owner))
    before = (await _log(client, unique_sub, owner)).json()["events"]

    response = await _log(client, unique_sub, owner, cursor=cursor)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert detail.startswith("query.cursor: ")
    assert "; " not in detail  # one reason, stated once
    # Reading the log is not audited, and neither is a refused read of it.
    assert (await _log(client, unique_sub, owner)).json()["events"] == before


async def test_the_largest_sequence_number_is_a_valid_cursor(
    client: httpx.AsyncClient, token: TokenFactory, unique_sub: str
) -> None:
    owner = token(unique_sub, ALL)
    await client.get(key_path(unique_sub, "/status"), headers=bearer(owner))
    response = await _log(client, unique_sub, owner, cursor=_cursor_of(f"seq:{2**63 - 1}"))
    assert response.status_code == 200
    assert [e["action"] for e in response.json()["events"]] == ["status"]
