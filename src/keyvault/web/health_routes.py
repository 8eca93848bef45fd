"""The routes that are not about a key: liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.db.engine import session_scope
from keyvault.errors import KeyringOutdated, Unauthorized
from keyvault.keys import repository
from keyvault.observability.metrics import RecordCounts, render
from keyvault.web.key_routes import problems
from keyvault.web.state import State, state_of

router = APIRouter()


def record_counts(sessions: async_sessionmaker[AsyncSession]) -> RecordCounts:
    """The `keyvault_records` collector, counting the key records in `sessions`' database."""

    async def count() -> dict[str, int]:
        async with session_scope(sessions) as session:
            return await repository.count_records_by_key_id(session)

    return RecordCounts(count)


@router.get("/healthz", summary="The process is up", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable and the keyring open",
    tags=["health"],
    responses=problems(503),
)
async def readyz(request: Request) -> dict[str, str]:
    state = state_of(request.app)  # 503 until the keyring is open
    if not state.keyring.fresh:
        raise KeyringOutdated()
    async with session_scope(state.sessions) as session:
        await session.execute(text("SELECT 1"))
    return {"status": "ready"}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Text exposition format. Needs `Authorization: Bearer <KEYVAULT_METRICS_TOKEN>` "
    "when that setting is given.",
    tags=["health"],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(request: Request, state: State) -> Response:
    _check_metrics_token(state.metrics_token, request.headers.get("authorization"))
    await state.record_counts.refresh()
    return Response(render(state.record_counts), media_type=CONTENT_TYPE_LATEST)


def _check_metrics_token(expected: SecretStr | None, header: str | None) -> None:
    if expected is None:
        return
    scheme, _, given = (header or "").partition(" ")
    wanted = expected.get_secret_value().encode("utf-8")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), wanted):
        raise Unauthorized("/metrics needs the metrics bearer token.", error=None)
