"""PUT /users/{sub}/api-key with If-Match / If-None-Match: which preconditions replace, create or
answer 412, and which are malformed."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import TokenFactory, bearer, key_path
from tests.keys.put_support import WRITE, put


async def test_if_match_with_the_current_etag_replaces(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    created = await put(client, token, "alice", {"api_key": "sk-first-000000000000"})
    response = await put(
        client,
        token,
        "alice",
        {"api_key": "sk-second-00000000000"},
        **{"If-Match": created.headers["ETag"]},
    )
    assert response.status_code == 200
    assert response.json()["version"] == 2


async def test_if_match_with_a_stale_etag_is_412_and_keeps_the_value(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    created = await put(client, token, "alice", {"api_key": "sk-first-000000000000"})
    await put(client, token, "alice", {"api_key": "sk-second-00000000000"})

    response = await put(
        client,
        token,
        "alice",
        {"api_key": "sk-third-000000000000"},
        **{"If-Match": created.headers["ETag"]},
    )

    assert response.status_code == 412
    assert response.headers["content-type"] == "application/problem+json"
    read = await client.get(key_path("alice"), headers=bearer(token("alice", WRITE)))
    assert read.json() | {"api_key": "sk-second-00000000000", "version": 2} == read.json()


async def test_if_match_on_a_missing_key_is_412(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    response = await put(
        client, token, "alice", {"api_key": "sk-first-000000000000"}, **{"If-Match": "*"}
    )
    assert response.status_code == 412


async def test_etag_from_before_a_delete_does_not_match_the_recreated_key(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    old = await put(client, token, "alice", {"api_key": "sk-first-000000000000"})
    await client.delete(key_path("alice"), headers=bearer(token("alice", "api-key:delete")))
    recreated = await put(client, token, "alice", {"api_key": "sk-second-00000000000"})
    assert recreated.json()["version"] == 1

    response = await put(
        client,
        token,
        "alice",
        {"api_key": "sk-third-000000000000"},
        **{"If-Match": old.headers["ETag"]},
    )
    assert response.status_code == 412


async def test_if_none_match_star_only_creates(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    first = await put(
        client, token, "alice", {"api_key": "sk-first-000000000000"}, **{"If-None-Match": "*"}
    )
    second = await put(
        client, token, "alice", {"api_key": "sk-second-00000000000"}, **{"If-None-Match": "*"}
    )
    assert (first.status_code, second.status_code) == (201, 412)


@pytest.mark.parametrize(
    "if_none_match",
    ["{etag}", "W/{etag}", '"1.0", {etag}'],
)
async def test_if_none_match_with_the_current_etag_is_412_and_keeps_the_value(
    client: httpx.AsyncClient, token: TokenFactory, if_none_match: str
) -> None:
    created = await put(client, token, "alice", {"api_key": "sk-first-000000000000"})
    response = await put(
        client,
        token,
        "alice",
        {"api_key": "sk-second-00000000000"},
        **{"If-None-Match": if_none_match.format(etag=created.headers["ETag"])},
    )
    assert response.status_code == 412
    read = await client.get(key_path("alice"), headers=bearer(token("alice", WRITE)))
    assert read.json()["version"] == 1


async def test_if_none_match_with_another_etag_replaces(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    await put(client, token, "alice", {"api_key": "sk-first-000000000000"})
    response = await put(
        client, token, "alice", {"api_key": "sk-second-00000000000"}, **{"If-None-Match": '"1.0"'}
    )
    assert response.status_code == 200


async def test_if_match_with_a_weak_current_etag_is_412(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    created = await put(client, token, "alice", {"api_key": "sk-first-000000000000"})
    response = await put(
        client,
        token,
        "alice",
        {"api_key": "sk-second-00000000000"},
        **{"If-Match": f"W/{created.headers['ETag']}"},
    )
    assert response.status_code == 412


@pytest.mark.parametrize(
    "headers",
    [
        [("If-Match", '*, "x"')],
        [("If-Match", "{etag}, *")],
        [("If-Match", "not-quoted")],
        [("If-None-Match", '"x"'), ("If-None-Match", "*")],
    ],
)
async def test_a_malformed_precondition_is_422_and_writes_nothing(
    client: httpx.AsyncClient, token: TokenFactory, headers: list[tuple[str, str]]
) -> None:
    created = await put(client, token, "alice", {"api_key": "sk-first-000000000000"})
    etag = created.headers["ETag"]
    response = await client.put(
        key_path("alice"),
        json={"api_key": "sk-second-00000000000"},
        headers=[
            *bearer(token("alice", WRITE)).items(),
            *((name, value.format(etag=etag)) for name, value in headers),
        ],
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    read = await client.get(key_path("alice"), headers=bearer(token("alice", WRITE)))
    assert read.json()["version"] == 1


async def test_if_none_match_field_lines_are_one_list(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    created = await put(client, token, "alice", {"api_key": "sk-first-000000000000"})
    response = await client.put(
        key_path("alice"),
        json={"api_key": "sk-second-00000000000"},
        headers=[
            *bearer(token("alice", WRITE)).items(),
            ("If-None-Match", '"1.0"'),
            ("If-None-Match", created.headers["ETag"]),
        ],
    )
    assert response.status_code == 412
