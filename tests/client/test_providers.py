"""openai_client and anthropic_client: the official SDKs, pointed at keyvault's provider proxy.

These tests check what each SDK sends, over real HTTP, to a local server standing in for keyvault:
the proxy's base URL, the keyvault token where the SDK puts its key, and the user in
`X-Keyvault-User`, percent-encoded. tests/web/test_proxy_sdks.py calls the real proxy with them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from keyvault_client import ClientCredentials, KeyVault, anthropic_client, openai_client
from tests.client.conftest import SERVICE_ID
from tests.client.support import CANARY_SECRET
from tests.identity_provider import IdentityProvider, TokenIssuer

SUB = "google-oauth2|42/é"
ENCODED_SUB = "google-oauth2%7C42%2F%C3%A9"
TOKEN = "CANARY-keyvault-token-0123456789"
DEADLINE_SECONDS = 10.0
ANSWERS = {
    "/proxy/openai/models": {"object": "list", "data": []},
    "/proxy/anthropic/v1/models": {
        "data": [],
        "has_more": False,
        "first_id": None,
        "last_id": None,
    },
}


@dataclass
class Recorded:
    url: str = ""
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def stand_in() -> Iterator[Recorded]:
    recorded = Recorded()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            recorded.requests.append(
                ("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
            )
            body = json.dumps(ANSWERS.get(self.path.split("?")[0], {})).encode()
            self.send_response(200 if self.path.split("?")[0] in ANSWERS else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    recorded.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield recorded
    finally:
        server.shutdown()
        server.server_close()


def test_the_openai_client_calls_the_proxy_with_the_keyvault_token(stand_in: Recorded) -> None:
    with KeyVault(stand_in.url, token=TOKEN) as vault:
        client = openai_client(SUB, vault=vault, max_retries=0)
        client.models.list()
        client.close()

    method, path, headers = stand_in.requests[0]
    assert (method, path) == ("GET", "/proxy/openai/models")
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["x-keyvault-user"] == ENCODED_SUB
    assert str(client.base_url) == f"{stand_in.url}/proxy/openai/"


def test_the_anthropic_client_calls_the_proxy_with_the_keyvault_token(
    stand_in: Recorded,
) -> None:
    with KeyVault(stand_in.url + "/", token=TOKEN) as vault:
        client = anthropic_client(
            SUB, vault=vault, max_retries=0, default_headers={"X-Team": "billing"}
        )
        client.models.list()
        client.close()

    method, path, headers = stand_in.requests[0]
    assert (method, path.split("?")[0]) == ("GET", "/proxy/anthropic/v1/models")
    # As its api_key: `x-api-key` in the SDK's older releases, a bearer token in newer ones; the
    # proxy reads either.
    assert TOKEN in (headers.get("x-api-key"), headers.get("authorization", "")[len("Bearer ") :])
    assert headers["x-keyvault-user"] == ENCODED_SUB
    assert headers["x-team"] == "billing"


def test_the_openai_client_asks_for_the_token_before_each_request(
    stand_in: Recorded, identity_provider: IdentityProvider, issuer: TokenIssuer
) -> None:
    issuer.lifetime = 2  # replaced 0.2 s before it expires
    credentials = ClientCredentials(identity_provider.token_url, SERVICE_ID, CANARY_SECRET)
    with KeyVault(stand_in.url, token=credentials) as vault:
        client = openai_client(SUB, vault=vault, max_retries=0)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(issuer.issued) < 2:
            assert time.monotonic() < deadline, "the token was never replaced"
            client.models.list()
            time.sleep(0.1)  # polling interval while the token ages
        client.models.list()
        client.close()

    sent = {headers["authorization"] for _, _, headers in stand_in.requests}
    assert sent == {f"Bearer {token}" for token in issuer.issued}


def test_the_default_vault_comes_from_the_environment(
    stand_in: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyvault_client

    monkeypatch.setenv("KEYVAULT_URL", stand_in.url)
    monkeypatch.setenv("KEYVAULT_TOKEN", TOKEN)
    for name in ("KEYVAULT_CLIENT_ID", "KEYVAULT_CLIENT_SECRET", "KEYVAULT_TOKEN_URL"):
        monkeypatch.delenv(name, raising=False)
    keyvault_client.close_default_vault()
    try:
        client = openai_client(SUB)
        assert str(client.base_url) == f"{stand_in.url}/proxy/openai/"
        client.close()
    finally:
        keyvault_client.close_default_vault()


def test_a_sub_is_required() -> None:
    with KeyVault("http://kv.test", token=TOKEN) as vault, pytest.raises(ValueError, match="sub"):
        openai_client("", vault=vault)
