from __future__ import annotations

import asyncio

import httpx

from tests.conftest import TokenFactory, bearer, key_path

WRITERS = 20


async def test_concurrent_puts_leave_one_complete_decryptable_value(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    headers = bearer(token("alice", "api-key:read api-key:write"))
    values = [f"sk-writer-{n:02d}-000000000000" for n in range(WRITERS)]

    responses = await asyncio.gather(
        *(
            client.put(key_path("alice"), json={"api_key": value}, headers=headers)
            for value in values
        )
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * (WRITERS - 1) + [201]
    assert sorted(response.json()["version"] for response in responses) == list(
        range(1, WRITERS + 1)
    )
    final = await client.get(key_path("alice"), headers=headers)
    assert final.status_code == 200
    assert final.json()["version"] == WRITERS
    winner = next(r for r in responses if r.json()["version"] == WRITERS)
    assert final.json()["last4"] == winner.json()["last4"]
    assert final.json()["api_key"] in values


async def test_concurrent_conditional_puts_let_exactly_one_win(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    headers = bearer(token("alice", "api-key:read api-key:write"))
    created = await client.put(
        key_path("alice"), json={"api_key": "sk-original-0000000000"}, headers=headers
    )
    etag = created.headers["ETag"]

    responses = await asyncio.gather(
        *(
            client.put(
                key_path("alice"),
                json={"api_key": f"sk-cas-{n:02d}-00000000000"},
                headers=headers | {"If-Match": etag},
            )
            for n in range(10)
        )
    )

    assert sorted(r.status_code for r in responses) == [200] + [412] * 9
    final = await client.get(key_path("alice"), headers=headers)
    winner = next(r for r in responses if r.status_code == 200)
    assert final.json()["version"] == 2
    assert final.json()["last4"] == winner.json()["last4"]
