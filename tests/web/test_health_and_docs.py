from __future__ import annotations

import httpx

from keyvault.web.app import KeyvaultApp
from tests.conftest import bearer, key_path, mint


async def test_healthz_answers_without_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_checks_the_database_and_the_keyring(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


async def test_readyz_is_503_without_a_verified_master_key(
    app: KeyvaultApp, client: httpx.AsyncClient
) -> None:
    # The app's state exists once the master key is verified, and only then.
    state, app.keyvault = app.keyvault, None
    try:
        response = await client.get("/readyz")
    finally:
        app.keyvault = state
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


async def test_every_response_says_nosniff_and_carries_a_request_id(
    client: httpx.AsyncClient,
) -> None:
    for response in (
        await client.get("/healthz"),
        await client.get(key_path("alice")),
        await client.get("/no-such-route"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Request-ID"]


async def test_a_given_request_id_is_echoed_and_a_hostile_one_replaced(
    client: httpx.AsyncClient,
) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "trace-abc.123"})
    hostile = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert given.headers["X-Request-ID"] == "trace-abc.123"
    assert hostile.headers["X-Request-ID"] != "x" * 500


async def test_unknown_routes_and_methods_are_problem_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nothing-here")
    wrong_method = await client.post(
        key_path("alice"), headers=bearer(mint("alice", "api-key:write"))
    )
    assert (missing.status_code, wrong_method.status_code) == (404, 405)
    assert (
        missing.headers["content-type"]
        == wrong_method.headers["content-type"]
        == "application/problem+json"
    )


async def test_openapi_describes_every_route_the_bearer_scheme_and_errors(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()

    paths = spec["paths"]
    assert set(paths["/users/{sub}/api-key"]) == {"get", "put", "delete"}
    assert set(paths["/users/{sub}/api-key/status"]) == {"get"}
    assert {"/healthz", "/readyz"} <= set(paths)
    schemes = spec["components"]["securitySchemes"]
    assert any(
        scheme == {"type": "http", "scheme": "bearer"} | scheme for scheme in schemes.values()
    )
    read = paths["/users/{sub}/api-key"]["get"]
    assert {"200", "401", "403", "404", "422", "500"} <= set(read["responses"])
    assert "application/problem+json" in read["responses"]["404"]["content"]
    assert read["security"]
    put = paths["/users/{sub}/api-key"]["put"]
    assert {"200", "201", "401", "403", "412", "413", "422"} <= set(put["responses"])


async def test_docs_page_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()
