"""PUT /users/{sub}/api-key: the key it stores, the bodies, subs, paths and encodings it refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import TokenFactory, bearer, key_path
from tests.keys.put_support import CANARY, WRITE, put


async def test_first_put_creates_version_one(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    response = await put(client, token, "alice", {"api_key": "sk-proj-abcdefghijkl1234"})

    assert response.status_code == 201
    body = response.json()
    assert body == body | {"sub": "alice", "has_api_key": True, "version": 1, "last4": "1234"}
    assert body["created_at"] == body["updated_at"]
    assert response.headers["ETag"].startswith('"1.')


async def test_second_put_replaces_and_bumps_the_version(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    await put(client, token, "alice", {"api_key": "sk-first-000000000000"})
    response = await put(client, token, "alice", {"api_key": "sk-second-00000000000"})

    assert response.status_code == 200
    assert response.json()["version"] == 2
    assert response.headers["ETag"].startswith('"2.')
    read = await client.get(key_path("alice"), headers=bearer(token("alice", WRITE)))
    assert read.json()["api_key"] == "sk-second-00000000000"


async def test_surrounding_whitespace_is_trimmed(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    await put(client, token, "alice", {"api_key": " \t sk-padded-000000000000 \n"})
    read = await client.get(key_path("alice"), headers=bearer(token("alice", WRITE)))
    assert read.json()["api_key"] == "sk-padded-000000000000"


async def test_short_key_gets_no_last4(client: httpx.AsyncClient, token: TokenFactory) -> None:
    response = await put(client, token, "alice", {"api_key": "short"})
    assert response.status_code == 201
    assert response.json()["last4"] is None


@pytest.mark.parametrize(
    ("api_key", "reason"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("sk-" + "x" * 1022, "at most 1024 characters"),
        ("sk-inner space-CANARY", "must not contain whitespace"),
        ("sk-CANARY\x00null", "must not contain control characters"),
        ("sk-CANARY\x1bescape", "must not contain control characters"),
        ("sk-CANARY\u200binvisible", "must not contain control characters"),
    ],
)
async def test_invalid_keys_are_422_without_echo(
    client: httpx.AsyncClient, token: TokenFactory, api_key: str, reason: str
) -> None:
    response = await put(client, token, "alice", {"api_key": api_key})

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert reason in response.json()["detail"]
    assert "CANARY" not in response.text
    assert "x" * 50 not in response.text
    status = await client.get(key_path("alice", "/status"), headers=bearer(token("alice", WRITE)))
    assert status.json()["has_api_key"] is False


async def test_key_of_exactly_1024_characters_is_accepted(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    response = await put(client, token, "alice", {"api_key": "k" * 1024})
    assert response.status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"api_key": CANARY, "extra": CANARY},
        {"apikey": CANARY},
        {CANARY: "the key sent as a field name"},
        {"api_key": "sk-0123456789abcdef", CANARY: 1},
        {"api_key": [CANARY]},
        [CANARY],
        CANARY,
    ],
)
async def test_malformed_bodies_are_422_and_never_echo_the_key(
    client: httpx.AsyncClient, token: TokenFactory, body: object
) -> None:
    response = await put(client, token, "alice", body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.json()) == {"type", "title", "status", "detail"}
    assert "CANARY" not in response.text


async def test_invalid_json_is_422_without_echo(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    response = await client.put(
        key_path("alice"),
        content=b'{"api_key": "sk-CANARY-0000000000",',
        headers=bearer(token("alice", WRITE)) | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "CANARY" not in response.text


async def test_body_over_16_kib_is_413(client: httpx.AsyncClient, token: TokenFactory) -> None:
    response = await put(client, token, "alice", {"api_key": "k" * (16 * 1024 + 1)})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_streamed_body_over_16_kib_is_413(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"api_key": "'
        for _ in range(20):
            yield b"k" * 1024
        yield b'"}'

    response = await client.put(
        key_path("alice"),
        content=chunks(),
        headers=bearer(token("alice", WRITE)) | {"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    status = await client.get(key_path("alice", "/status"), headers=bearer(token("alice", WRITE)))
    assert status.json()["has_api_key"] is False


async def test_http2_body_without_a_length_over_16_kib_is_413(
    app: FastAPI, token: TokenFactory
) -> None:
    """HTTP/2 frames a body without Content-Length or Transfer-Encoding: it is still counted."""
    chunks = [b'{"api_key": "', *(b"k" * 1024 for _ in range(20)), b'"}']
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks
    ]
    messages[-1]["more_body"] = False
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    authorization = f"Bearer {token('alice', WRITE)}".encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "2",
        "method": "PUT",
        "scheme": "http",
        "path": key_path("alice"),
        "raw_path": key_path("alice").encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", authorization), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 413


@pytest.mark.parametrize("sub", ["google-oauth2|1234", "auth0|abc/def", "ünïcødé user", "x" * 255])
async def test_unusual_but_valid_subs_round_trip(
    client: httpx.AsyncClient, token: TokenFactory, sub: str
) -> None:
    response = await put(client, token, sub, {"api_key": "sk-unusual-sub-0000000"})
    assert response.status_code == 201
    assert response.json()["sub"] == sub
    read = await client.get(key_path(sub), headers=bearer(token(sub, WRITE)))
    assert read.json()["sub"] == sub


@pytest.mark.parametrize(
    "sub",
    ["x" * 256, "tab\there", "nul\x00byte", "del\x7f", "new\nline", "carriage\rreturn", "x\ufffd"],
)
async def test_invalid_subs_are_422(
    client: httpx.AsyncClient, token: TokenFactory, sub: str
) -> None:
    response = await put(client, token, sub, {"api_key": "sk-unusual-sub-0000000"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_broken_sub_rule_is_named_once(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    response = await put(client, token, "new\nline", {"api_key": "sk-unusual-sub-0000000"})
    assert response.json()["detail"] == "path.sub: Value error, must not contain control characters"


@pytest.mark.parametrize("method", ["PUT", "GET"])
async def test_invalid_utf8_in_the_path_is_422_and_never_another_users_key(
    client: httpx.AsyncClient, token: TokenFactory, method: str
) -> None:
    # Both decode to "x\ufffd": as a sub they would be one user.
    headers = bearer(token("x\ufffd", WRITE))
    for path in ("/users/x%ff/api-key", "/users/x%fe/api-key"):
        response = await client.request(
            method, path, json={"api_key": "sk-0000000000000"}, headers=headers
        )
        assert response.status_code == 422
        assert "valid UTF-8" in response.json()["detail"]


async def test_a_newline_after_the_route_is_not_the_route(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    await put(client, token, "alice", {"api_key": "sk-alice-0000000000"})
    headers = bearer(token("alice", WRITE))
    for suffix in ("%0A", "/status%0A"):
        response = await client.get(f"/users/alice/api-key{suffix}", headers=headers)
        assert response.status_code == 404
        assert "sk-alice" not in response.text


async def test_a_lone_surrogate_in_the_key_is_422_and_stores_nothing(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    response = await client.put(
        key_path("alice"),
        content=b'{"api_key": "sk-CANARY\\ud800defghijkl"}',
        headers=bearer(token("alice", WRITE)) | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "api_key: Value error, must not contain unpaired surrogates"
    assert "CANARY" not in response.text
    status = await client.get(key_path("alice", "/status"), headers=bearer(token("alice", WRITE)))
    assert status.json()["has_api_key"] is False


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"api_key": "sk-CANARY-\u00e9-000000"}'.encode("latin-1"), "body is not valid UTF-8"),
        ('{"api_key": "sk-CANARY-0000000000"}'.encode("utf-16"), "body is not valid UTF-8"),
        (b"[" * 5000 + b"]" * 5000, "body is not valid JSON"),
    ],
)
async def test_a_body_that_is_not_utf8_json_is_422(
    client: httpx.AsyncClient, token: TokenFactory, body: bytes, reason: str
) -> None:
    response = await client.put(
        key_path("alice"),
        content=body,
        headers=bearer(token("alice", WRITE)) | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == reason
    assert "CANARY" not in response.text


async def test_a_body_that_is_not_json_without_a_token_is_401(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put(
        key_path("alice"), content=b"\xff{", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401
