"""The running service's collaborators, built once by create_app's lifespan and handed to what
serves a request: the key endpoints take it from the app, the FastAPI routes through `State`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, Request
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.audit.trail import AuditTrail
from keyvault.auth.stepup import StepUpPolicy
from keyvault.auth.tokens import TokenVerifier
from keyvault.db.engine import session_scope
from keyvault.errors import ServiceUnavailable
from keyvault.keys.repository import RecordReader
from keyvault.keys.writes import KeyWrites
from keyvault.master_keys.live_keyring import LiveKeyring
from keyvault.master_keys.maintenance import KeyringMaintenance
from keyvault.observability.metrics import RecordCounts
from keyvault.providers.registry import Providers
from keyvault.providers.validation import KeyValidator
from keyvault.proxy.forwarding import Upstreams
from keyvault.ratelimit.limiter import RateLimiter


@dataclass(slots=True)
class AppState:
    """Everything a request may need beyond itself. It exists once the keyring is open."""

    sessions: async_sessionmaker[AsyncSession]
    record_reader: RecordReader
    record_counts: RecordCounts
    keyring: LiveKeyring
    audit: AuditTrail
    key_writes: KeyWrites
    providers: Providers
    key_validator: KeyValidator
    proxy: Upstreams
    proxy_max_body_bytes: int
    token_verifier: TokenVerifier
    rate_limiter: RateLimiter
    step_up: StepUpPolicy
    metrics_token: SecretStr | None
    # The keyring's upkeep (reload, scheduled rotation, rewrap); None for a keyring given by a test.
    maintenance: KeyringMaintenance | None = None


class HoldsState(Protocol):
    """What the app is to those who read its state (web.app.KeyvaultApp), named without importing
    the app factory, which imports them."""

    keyvault: AppState | None


def state_of(app: HoldsState) -> AppState:
    """The app's state; 503 while the app is not started (or no longer ready)."""
    if app.keyvault is None:
        raise ServiceUnavailable("The keyring is not open yet.")
    return app.keyvault


async def app_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request.
    return state_of(request.app)


State = Annotated[AppState, Depends(app_state)]


async def get_session(state: State) -> AsyncIterator[AsyncSession]:
    async with session_scope(state.sessions) as session:
        yield session


# scope="function": commit before the response is sent, so a failed commit is never reported as 2xx.
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]
