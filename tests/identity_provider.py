"""A real local HTTP server playing the identity provider: its JWKS endpoint, which a test can make
roll its keys over, fail, or hang (each hang bounded, and released when the server stops), and an
OAuth 2 client-credentials token endpoint (POST, any path) when given a `TokenIssuer`."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

import jwt
from jwt.algorithms import RSAAlgorithm

from tests.conftest import AUDIENCE, ISSUER

HANG_LIMIT_SECONDS = 10.0


def jwks_of(keys: dict[str, Any]) -> dict[str, Any]:
    """The key set publishing each RSA private key's public half under its kid."""
    return {
        "keys": [
            json.loads(RSAAlgorithm.to_jwk(key.public_key())) | {"kid": kid, "use": "sig"}
            for kid, key in keys.items()
        ]
    }


@dataclass
class TokenIssuer:
    """Issues RS256 `at+jwt` access tokens for keyvault to registered clients (RFC 6749 section 4.4,
    client_secret_basic or client_secret_post): `sub` is the client id, `scope` the client's.

    `lifetime` is the `expires_in` given; `audience` the `aud` the tokens carry (another one makes
    keyvault refuse them); `requests` holds each token request's form, as received.
    """

    key: Any
    kid: str
    clients: dict[str, tuple[str, str]]  # client_id -> (secret, scope)
    lifetime: int = 300
    audience: str = AUDIENCE
    status: int = 200
    requests: list[dict[str, str]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def answer(self, authorization: str | None, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.requests.append(form)
        if self.status != 200:
            return self.status, {"error": "temporarily_unavailable"}
        client_id, secret = _client_authentication(authorization, form)
        registered = self.clients.get(client_id or "")
        if registered is None or registered[0] != secret:
            return 401, {"error": "invalid_client", "error_description": "Unknown client."}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        now = int(time.time())
        claims = {
            "sub": client_id,
            "client_id": client_id,
            "scope": registered[1],
            "iss": ISSUER,
            "aud": self.audience,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(
            claims, self.key, algorithm="RS256", headers={"kid": self.kid, "typ": "at+jwt"}
        )
        self.issued.append(token)
        body = {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}
        return 200, body


def _client_authentication(
    authorization: str | None, form: dict[str, str]
) -> tuple[str | None, str | None]:
    if authorization and authorization.startswith("Basic "):
        user, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
        return unquote(user), unquote(secret)
    return form.get("client_id"), form.get("client_secret")


class IdentityProvider:
    def __init__(self, key_set: dict[str, Any], issuer: TokenIssuer | None = None) -> None:
        self.key_set = key_set
        self.issuer = issuer
        self.status = 200
        self.requests = 0
        self._hanging = threading.Event()
        self._release = threading.Event()
        self.url = ""

    def hang(self) -> None:
        """Answer nothing until `release` (or HANG_LIMIT_SECONDS)."""
        self._release.clear()
        self._hanging.set()

    def release(self) -> None:
        self._hanging.clear()
        self._release.set()

    def _respond(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests += 1
        if self._hanging.is_set():
            self._release.wait(HANG_LIMIT_SECONDS)
        body = json.dumps(self.key_set).encode()
        try:
            handler.send_response(self.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:  # a client that gave up on a hanging answer has closed the connection
            pass

    def _issue(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        form = {
            name: values[0]
            for name, values in parse_qs(handler.rfile.read(length).decode("ascii")).items()
        }
        if self.issuer is None:
            status, body = 404, {"error": "not_found"}
        else:
            status, body = self.issuer.answer(handler.headers.get("Authorization"), form)
        encoded = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("Content-Length", str(len(encoded)))
        handler.end_headers()
        handler.wfile.write(encoded)

    @property
    def token_url(self) -> str:
        return self.url.rsplit("/", 1)[0] + "/token"


@contextmanager
def running_provider(
    key_set: dict[str, Any], path: str = "/jwks.json", issuer: TokenIssuer | None = None
) -> Iterator[IdentityProvider]:
    provider = IdentityProvider(key_set, issuer)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            provider._respond(self)

        def do_POST(self) -> None:
            provider._issue(self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    provider.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    try:
        yield provider
    finally:
        provider.release()
        server.shutdown()
        server.server_close()
