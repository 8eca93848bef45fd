"""Attacks on token verification, against the app with both HS256 and an identity provider's JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import Request
from fastapi.security import HTTPBearer
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from keyvault.auth.tokens import bearer_token
from keyvault.crypto.records import Keyring
from keyvault.web.app import create_app
from tests.conftest import AUDIENCE, ISSUER, JWT_SECRET, bearer, key_path, make_settings, mint

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ATTACKER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SCOPE = "api-key:read api-key:write"
AT_JWT = "at+jwt"


def _jwks() -> dict[str, Any]:
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    ec_jwk = json.loads(ECAlgorithm.to_jwk(EC_KEY.public_key()))
    return {
        "keys": [rsa_jwk | {"kid": "rsa-1", "use": "sig"}, ec_jwk | {"kid": "ec-1", "use": "sig"}]
    }


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    body = json.dumps(_jwks()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def idp_client(
    database_url: str, keyring: Keyring, jwks_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(database_url, jwks_url=jwks_url), keyring=keyring)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://keyvault.test"
        ) as client:
            yield client


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "scope": SCOPE,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(signature)}"


def hmac_signed(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    unsigned = forge(header, payload).rsplit(".", 1)[0]
    return f"{unsigned}.{_b64(hmac.new(secret, unsigned.encode(), hashlib.sha256).digest())}"


async def status_with(client: httpx.AsyncClient, token_value: str) -> httpx.Response:
    return await client.get(key_path("alice", "/status"), headers=bearer(token_value))


async def test_valid_hs256_token_is_accepted(idp_client: httpx.AsyncClient) -> None:
    assert (await status_with(idp_client, mint("alice", SCOPE))).status_code == 200


@pytest.mark.parametrize(
    ("key", "algorithm", "kid"), [(RSA_KEY, "RS256", "rsa-1"), (EC_KEY, "ES256", "ec-1")]
)
async def test_identity_provider_tokens_are_accepted(
    idp_client: httpx.AsyncClient, key: Any, algorithm: str, kid: str
) -> None:
    token_value = jwt.encode(
        claims(), key, algorithm=algorithm, headers={"kid": kid, "typ": AT_JWT}
    )
    assert (await status_with(idp_client, token_value)).status_code == 200


async def test_alg_none_is_refused(idp_client: httpx.AsyncClient) -> None:
    response = await status_with(idp_client, forge({"alg": "none", "typ": "JWT"}, claims()))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_alg_none_with_a_known_kid_is_refused(idp_client: httpx.AsyncClient) -> None:
    response = await status_with(
        idp_client, forge({"alg": "none", "kid": "rsa-1", "typ": AT_JWT}, claims())
    )
    assert response.status_code == 401


async def test_hs256_signed_with_the_public_key_is_refused(idp_client: httpx.AsyncClient) -> None:
    """Key confusion: the public key, known to all, used as an HMAC secret."""
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for header in ({"alg": "HS256", "kid": "rsa-1", "typ": AT_JWT}, {"alg": "HS256"}):
        response = await status_with(idp_client, hmac_signed(header, claims(), public_pem))
        assert response.status_code == 401


async def test_rs256_token_without_kid_is_not_checked_against_the_hs_secret(
    idp_client: httpx.AsyncClient,
) -> None:
    token_value = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    assert (await status_with(idp_client, token_value)).status_code == 401


async def test_token_signed_by_another_key_under_a_known_kid_is_refused(
    idp_client: httpx.AsyncClient,
) -> None:
    token_value = jwt.encode(
        claims(), ATTACKER_RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1", "typ": AT_JWT}
    )
    assert (await status_with(idp_client, token_value)).status_code == 401


async def test_unknown_kid_is_refused(idp_client: httpx.AsyncClient) -> None:
    token_value = jwt.encode(
        claims(), RSA_KEY, algorithm="RS256", headers={"kid": "not-in-the-set", "typ": AT_JWT}
    )
    response = await status_with(idp_client, token_value)
    assert response.status_code == 401
    assert "key set" in response.json()["detail"]


async def test_expired_token_is_refused(idp_client: httpx.AsyncClient) -> None:
    now = int(time.time())
    response = await status_with(idp_client, mint("alice", SCOPE, iat=now - 600, exp=now - 120))
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


async def test_token_just_past_expiry_is_within_leeway(idp_client: httpx.AsyncClient) -> None:
    now = int(time.time())
    response = await status_with(idp_client, mint("alice", SCOPE, iat=now - 600, exp=now - 5))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("claim", "value"), [("aud", "someone-else"), ("iss", "https://evil.example")]
)
async def test_token_for_another_audience_or_from_another_issuer_is_refused(
    idp_client: httpx.AsyncClient, claim: str, value: str
) -> None:
    assert (
        await status_with(idp_client, mint("alice", SCOPE, **{claim: value}))
    ).status_code == 401


@pytest.mark.parametrize("claim", ["exp", "sub", "iss", "aud"])
async def test_token_missing_a_required_claim_is_refused(
    idp_client: httpx.AsyncClient, claim: str
) -> None:
    token_value = jwt.encode(claims(**{claim: None}), JWT_SECRET, algorithm="HS256")
    response = await status_with(idp_client, token_value)
    assert response.status_code == 401
    assert claim in response.json()["detail"]


async def test_non_string_sub_is_refused(idp_client: httpx.AsyncClient) -> None:
    assert (await status_with(idp_client, mint(12345, SCOPE))).status_code == 401  # type: ignore[arg-type]


async def test_tampered_payload_is_refused(idp_client: httpx.AsyncClient) -> None:
    header, _payload, signature = mint("bob", SCOPE).split(".")
    elevated = _b64(json.dumps(claims(sub="alice", scope=SCOPE + " users:any")).encode())
    assert (await status_with(idp_client, f"{header}.{elevated}.{signature}")).status_code == 401


async def test_token_signed_with_another_secret_is_refused(idp_client: httpx.AsyncClient) -> None:
    token_value = mint("alice", SCOPE, secret="x" * 40)
    assert (await status_with(idp_client, token_value)).status_code == 401


async def test_error_bodies_never_echo_the_token(idp_client: httpx.AsyncClient) -> None:
    token_value = mint("alice", SCOPE, aud="someone-else")
    response = await status_with(idp_client, token_value)
    assert token_value not in response.text
    assert token_value.split(".")[1] not in response.text
    assert JWT_SECRET not in response.text


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer abc",
        "bearer abc",
        "BEARER  abc ",
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Bearerabc",
        " Bearer abc",
        "Bearer a b",
        "Bearer\tabc",
    ],
)
async def test_bearer_token_reads_the_header_as_the_routes_do(header: str | None) -> None:
    headers = [] if header is None else [(b"authorization", header.encode())]
    expected = await HTTPBearer(auto_error=False)(Request({"type": "http", "headers": headers}))
    assert bearer_token(header) == (None if expected is None else expected.credentials)
