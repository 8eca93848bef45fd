"""/docs and /openapi.json: assets from the service itself, examples for every answer."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from keyvault.errors import PROBLEM_JSON, PROBLEM_TYPE_BASE
from keyvault.web.app import create_app
from keyvault.web.docs import ASSET_CACHE_CONTROL, STATIC_PATH
from tests.conftest import TokenFactory, bearer, key_path, make_settings

SOURCE = Path(__file__).resolve().parents[2] / "src" / "keyvault"


def soon(*, seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def problem_examples(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A documented error's examples: one `example`, or `examples` when it has several types."""
    content = response["content"][PROBLEM_JSON]
    if "example" in content:
        return [content["example"]]
    return [shown["value"] for shown in content["examples"].values()]


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


async def test_docs_page_loads_every_script_and_stylesheet_from_the_service(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {asset.rsplit("/", 1)[-1] for asset in assets} == {
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "favicon.png",
    }
    for asset in assets:
        assert asset.startswith(f"{STATIC_PATH}/"), asset
        fetched = await client.get(asset)
        assert fetched.status_code == 200, asset
        assert len(fetched.content) > 1000, asset
    assert "://" not in page.text.replace("window.location", "")


async def test_docs_assets_may_be_cached_but_the_page_and_schema_may_not(
    client: httpx.AsyncClient,
) -> None:
    asset = await client.get(f"{STATIC_PATH}/swagger-ui-bundle.js")
    assert asset.headers["Cache-Control"] == ASSET_CACHE_CONTROL
    assert asset.headers["Content-Type"].startswith(("application/javascript", "text/javascript"))
    for path in ("/docs", "/openapi.json"):
        assert (await client.get(path)).headers["Cache-Control"] == "no-store"


async def test_fastapi_cdn_pages_are_not_served(client: httpx.AsyncClient) -> None:
    assert (await client.get("/redoc")).status_code == 404
    assert (await client.get("/docs/oauth2-redirect")).status_code == 404


async def test_every_error_is_documented_as_problem_json_with_an_example(
    client: httpx.AsyncClient,
) -> None:
    document = await openapi(client)
    errors = 0
    for method, path, operation in operations(document):
        for code, response in operation["responses"].items():
            if int(code) < 400:
                continue
            errors += 1
            content = response["content"]
            assert list(content) == [PROBLEM_JSON], (method, path, code)
            for example in problem_examples(response):
                assert example["status"] == int(code), (method, path, code)
                assert example["type"].startswith(PROBLEM_TYPE_BASE)
                assert example["title"]
                assert example["detail"]
                assert set(content[PROBLEM_JSON]["schema"]["required"]) == set(example)
    assert errors >= 20


async def test_success_responses_and_the_request_body_show_examples(
    client: httpx.AsyncClient,
) -> None:
    schemas = (await openapi(client))["components"]["schemas"]
    for name in ("ApiKeyWrite", "ApiKeyRead", "KeyStatus"):
        shown = {field for example in schemas[name]["examples"] for field in example}
        assert shown == set(schemas[name]["properties"]), name


async def test_key_operations_show_the_bearer_scheme(client: httpx.AsyncClient) -> None:
    document = await openapi(client)
    schemes = document["components"]["securitySchemes"]
    assert [scheme["scheme"].lower() for scheme in schemes.values()] == ["bearer"]
    (name,) = schemes
    for method, path, operation in operations(document):
        if path.startswith("/users/"):
            assert operation["security"] == [{name: []}], (method, path)


async def documented_examples(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """Every documented error example, by its problem type's slug."""
    examples: dict[str, dict[str, Any]] = {}
    for _method, _path, operation in operations(await openapi(client)):
        for code, response in operation["responses"].items():
            if int(code) >= 400:
                for example in problem_examples(response):
                    examples[example["type"].removeprefix(PROBLEM_TYPE_BASE)] = example
    return examples


async def test_error_examples_are_what_the_service_really_answers(
    client: httpx.AsyncClient, token: TokenFactory
) -> None:
    examples = await documented_examples(client)
    alice = bearer(token("alice", "api-key:read api-key:write"))
    await client.put(key_path("alice"), json={"api_key": "sk-docs-0123456789abcdef"}, headers=alice)
    expired = token("alice", "api-key:read", exp=int(time.time()) - 3600)
    await client.put(
        "/users/alice/api-keys/anthropic",
        json={"api_key": "sk-docs-0123456789abcdef", "expires_at": soon(seconds=0.1)},
        headers=alice,
    )
    await asyncio.sleep(0.2)  # the expiry is a moment in time: nothing to poll for
    answers = {
        "unauthorized": await client.get(key_path("alice"), headers=bearer(expired)),
        "forbidden": await client.get(key_path("bob"), headers=alice),
        "not-found": await client.get(
            key_path("carol"), headers=bearer(token("carol", "api-key:read"))
        ),
        "key-expired": await client.get("/users/alice/api-keys/anthropic", headers=alice),
        "unknown-provider": await client.get("/users/alice/api-keys/nobody", headers=alice),
        "precondition-failed": await client.put(
            key_path("alice"),
            json={"api_key": "sk-docs-0123456789abcdef"},
            headers=alice | {"If-Match": '"0.0"'},
        ),
        "payload-too-large": await client.put(
            key_path("alice"), json={"api_key": "x" * 20_000}, headers=alice
        ),
        "invalid-request": await client.put(
            key_path("alice"), json={"api_key": "sk with spaces"}, headers=alice
        ),
    }
    for slug, answer in answers.items():
        assert answer.json() == examples[slug], slug


async def test_error_examples_that_need_a_broken_record_or_database_quote_the_source(
    client: httpx.AsyncClient,
) -> None:
    examples = await documented_examples(client)
    source = "".join(
        path.read_text() for path in SOURCE.rglob("*.py") if path.name != "key_routes.py"
    )
    for slug in ("record-undecryptable", "database-unavailable"):
        assert f'"{examples[slug]["detail"]}"' in source, slug


def _provider_parameters(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): parameter["schema"]
        for method, path, operation in operations(document)
        for parameter in operation.get("parameters", [])
        if (parameter["name"], parameter["in"]) == ("provider", "path")
    }


async def test_the_provider_parameter_takes_the_configured_providers(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    schemas = _provider_parameters(await openapi(client))
    assert {path for _, path in schemas} == {
        "/users/{sub}/api-keys/{provider}",
        "/users/{sub}/api-keys/{provider}/status",
        "/proxy/{provider}/{path}",
    }
    assert len(schemas) == 4 + 5  # the key routes' operations, and each method of the proxy
    assert all(schema["enum"] == ["openai", "anthropic"] for schema in schemas.values())
    providers_file = tmp_path / "providers.toml"
    providers_file.write_text(
        '[providers.mistral]\nbase_url = "https://m.example"\nvalidation_path = "m"\n'
    )
    more = create_app(make_settings("sqlite+aiosqlite:///unused.db", providers_file=providers_file))
    for schema in _provider_parameters(more.openapi()).values():
        assert schema["enum"] == ["openai", "anthropic", "mistral"]


async def test_both_puts_document_validate(client: httpx.AsyncClient) -> None:
    document = await openapi(client)
    for path in ("/users/{sub}/api-key", "/users/{sub}/api-keys/{provider}"):
        put = document["paths"][path]["put"]
        (validate,) = [p for p in put["parameters"] if p["name"] == "validate"]
        assert (validate["in"], validate["schema"]["type"]) == ("query", "boolean")
        assert {"502", "504"} <= set(put["responses"])
