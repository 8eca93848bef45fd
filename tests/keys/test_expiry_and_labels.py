"""A key's `expires_at` and `label`: what a PUT accepts, and a key past its expiry: 404 key-expired
on a read, `expired: true` in its status, its record kept until it is replaced or deleted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from keyvault.config import Settings
from tests.audit_support import new_sub, stored_events
from tests.keys.test_provider_keys import PROBLEMS, as_, provider_path

# Long enough for the PUT to land before it; the test then waits it out (nothing to poll).
SHORT_LIFE = timedelta(milliseconds=300)


def _in(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


async def _expired_key(client: httpx.AsyncClient, sub: str, provider: str = "anthropic") -> None:
    written = await client.put(
        provider_path(sub, provider),
        json={"api_key": "sk-CANARY-expiring-0123", "expires_at": _in(SHORT_LIFE)},
        headers=as_(sub),
    )
    assert written.status_code == 201
    await asyncio.sleep(SHORT_LIFE.total_seconds() + 0.1)


async def test_label_and_expiry_are_stored_and_shown(client: httpx.AsyncClient) -> None:
    body = {
        "api_key": "sk-labelled-0123456789",
        "label": "CI key (prod)",
        "expires_at": _in(timedelta(days=30)),
    }
    written = await client.put(provider_path("ann", "anthropic"), json=body, headers=as_("ann"))
    assert written.status_code == 201
    read = (await client.get(provider_path("ann", "anthropic"), headers=as_("ann"))).json()
    expected = datetime.fromisoformat(body["expires_at"]).astimezone(UTC)
    assert read["label"] == "CI key (prod)"
    assert datetime.fromisoformat(read["expires_at"]) == expected
    assert written.json()["expired"] is False
    # A PUT replaces the whole record: without them, the label and expiry are gone.
    await client.put(
        provider_path("ann", "anthropic"),
        json={"api_key": "sk-relabelled-0123"},
        headers=as_("ann"),
    )
    status = (
        await client.get(provider_path("ann", "anthropic", "/status"), headers=as_("ann"))
    ).json()
    assert (status["label"], status["expires_at"], status["version"]) == (None, None, 2)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at: Value error, must be in the future"),
        (
            {"expires_at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()},
            "expires_at: Value error, must be in the future",
        ),
        ({"expires_at": "2999-01-01T00:00:00"}, "expires_at: Input should have timezone info"),
        (
            {"expires_at": 4102444800},
            "expires_at: Value error, must be an RFC 3339 date-time string with an offset",
        ),
        ({"expires_at": "next week"}, "expires_at: Input should be a valid datetime"),
        ({"label": ""}, "label: Value error, must be 1 to 64 characters"),
        ({"label": "CANARY" * 11}, "label: Value error, must be 1 to 64 characters"),
        ({"label": "CANARY\tlabel"}, "label: Value error, must not contain whitespace other than"),
        ({"label": "CANARY\u200b"}, "label: Value error, must not contain control characters"),
        ({"label": 7}, "label: Input should be a valid string"),
    ],
)
async def test_a_bad_expiry_or_label_is_422_and_nothing_is_stored(
    client: httpx.AsyncClient, body: dict[str, Any], detail: str
) -> None:
    response = await client.put(
        provider_path("ben", "anthropic"),
        json={"api_key": "sk-ben-0123456789", **body},
        headers=as_("ben"),
    )
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)
    assert "CANARY" not in response.text
    status = await client.get(provider_path("ben", "anthropic", "/status"), headers=as_("ben"))
    assert status.json()["has_api_key"] is False


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_an_expired_key_is_404_key_expired_and_its_status_says_so(
    client: httpx.AsyncClient, provider: str
) -> None:
    await _expired_key(client, "cleo", provider)
    paths = [provider_path("cleo", provider)]
    if provider == "openai":
        paths.append("/users/cleo/api-key")  # the same key
    for path in paths:
        read = await client.get(path, headers=as_("cleo"))
        assert read.status_code == 404
        assert read.json() == {
            "type": PROBLEMS + "key-expired",
            "title": "API key expired",
            "status": 404,
            "detail": "This API key has expired; store a new one to replace it.",
        }
        assert "CANARY" not in read.text
    status = (
        await client.get(provider_path("cleo", provider, "/status"), headers=as_("cleo"))
    ).json()
    assert (status["has_api_key"], status["expired"], status["version"]) == (True, True, 1)
    listed = (await client.get("/users/cleo/api-keys", headers=as_("cleo"))).json()
    assert [(key["provider"], key["expired"]) for key in listed["keys"]] == [(provider, True)]


async def test_an_expired_key_is_audited_as_expired(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    sub = new_sub()
    await _expired_key(client, sub)
    await client.get(provider_path(sub, "anthropic"), headers=as_(sub))
    events = await stored_events(settings.database_url.get_secret_value(), sub)
    assert [(e.event.action, e.event.outcome, e.event.provider) for e in events] == [
        ("put", "ok", "anthropic"),
        ("get", "expired", "anthropic"),
    ]


async def test_an_expired_key_stays_until_replaced_or_deleted(client: httpx.AsyncClient) -> None:
    await _expired_key(client, "dora")
    replaced = await client.put(
        provider_path("dora", "anthropic"),
        json={"api_key": "sk-fresh-0123456789"},
        headers=as_("dora"),
    )
    assert (replaced.status_code, replaced.json()["version"]) == (200, 2)
    read = await client.get(provider_path("dora", "anthropic"), headers=as_("dora"))
    assert (read.status_code, read.json()["api_key"]) == (200, "sk-fresh-0123456789")

    await _expired_key(client, "eve")
    assert (
        await client.delete(provider_path("eve", "anthropic"), headers=as_("eve"))
    ).status_code == 204
    status = (
        await client.get(provider_path("eve", "anthropic", "/status"), headers=as_("eve"))
    ).json()
    assert status["has_api_key"] is False


async def test_an_expired_keys_etag_still_makes_a_put_conditional(
    client: httpx.AsyncClient,
) -> None:
    await _expired_key(client, "fay")
    status = await client.get(provider_path("fay", "anthropic", "/status"), headers=as_("fay"))
    refused = await client.put(
        provider_path("fay", "anthropic"),
        json={"api_key": "sk-fay-new-0123456789"},
        headers=as_("fay") | {"If-None-Match": "*"},
    )
    assert refused.status_code == 412
    replaced = await client.put(
        provider_path("fay", "anthropic"),
        json={"api_key": "sk-fay-new-0123456789"},
        headers=as_("fay") | {"If-Match": status.headers["etag"]},
    )
    assert replaced.status_code == 200
