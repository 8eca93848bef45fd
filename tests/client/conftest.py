"""The client's tests run against one real `keyvault serve` per backend, shared by the whole run.

It trusts the test JWT secret (service tokens minted by tests.conftest.mint) and a local identity
provider: its JWKS, and its token endpoint for the client-credentials flow over real HTTP. Its
openai provider is a local fake (tests.client.support), for validation on save. Each
test has a sub of its own (with the characters a path must encode), whose keys go afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.client.support import CANARY_SECRET, running_fake_provider
from tests.conftest import AUDIENCE, bearer, mint
from tests.identity_provider import IdentityProvider, TokenIssuer, jwks_of, running_provider
from tests.server import delete_record, running_server

SERVICE_SCOPE = "api-key:read api-key:write api-key:delete users:any"
SERVICE_ID = "billing-service"
SIGNING_KID = "client-tests"
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_token(scope: str = SERVICE_SCOPE) -> str:
    return mint("billing-service", scope, client_id="billing-service")


@pytest.fixture(scope="session")
def identity_provider() -> Iterator[IdentityProvider]:
    token_issuer = TokenIssuer(
        SIGNING_KEY, SIGNING_KID, {SERVICE_ID: (CANARY_SECRET, SERVICE_SCOPE)}
    )
    with running_provider(jwks_of({SIGNING_KID: SIGNING_KEY}), issuer=token_issuer) as provider:
        yield provider


@pytest.fixture
def issuer(identity_provider: IdentityProvider) -> TokenIssuer:
    """The token endpoint as each test starts it: 5-minute tokens for keyvault, none issued yet."""
    token_issuer = identity_provider.issuer
    assert token_issuer is not None
    token_issuer.lifetime, token_issuer.audience, token_issuer.status = 300, AUDIENCE, 200
    token_issuer.requests.clear()
    token_issuer.issued.clear()
    return token_issuer


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[str]:
    with running_fake_provider() as base_url:
        yield base_url


@pytest.fixture(scope="session")
def keyvault_url(
    database_url: str,
    identity_provider: IdentityProvider,
    fake_provider: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    settings = {
        "KEYVAULT_JWKS_URL": identity_provider.url,
        "KEYVAULT_OPENAI_BASE_URL": fake_provider,
    }
    workdir = tmp_path_factory.mktemp("client-server")
    with running_server(database_url, workdir, settings=settings) as server:
        yield server.base_url


@pytest.fixture(scope="session")
def provider_routes(keyvault_url: str) -> bool:
    """Whether this server serves the provider key routes (`/users/{sub}/api-keys/{provider}`)."""
    answer = httpx.get(
        f"{keyvault_url}/users/probe/api-keys/openai/status",
        headers=bearer(service_token()),
        timeout=10,
    )
    return answer.status_code == 200


@pytest.fixture
def server_url(keyvault_url: str, provider_routes: bool) -> str:
    """The server's URL, for tests of the provider key routes (skipped on a server without them)."""
    if not provider_routes:
        pytest.skip("this keyvault serves no /users/{sub}/api-keys/{provider} routes")
    return keyvault_url


@pytest.fixture
async def sub(database_url: str) -> AsyncIterator[str]:
    value = f"google-oauth2|client/{uuid.uuid4().hex[:12]} é"
    yield value
    await delete_record(database_url, value)
