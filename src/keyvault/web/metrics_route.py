"""`GET /metrics`: the Prometheus exposition, behind KEYVAULT_METRICS_TOKEN when that is set."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.db.engine import session_scope
from keyvault.errors import Unauthorized
from keyvault.keys import repository
from keyvault.observability.metrics import RecordCounts, render

router = APIRouter()


def record_counts(sessions: async_sessionmaker[AsyncSession]) -> RecordCounts:
    """The `keyvault_records` collector, counting the key records in `sessions`' database."""

    async def count() -> dict[str, int]:
        async with session_scope(sessions) as session:
            return await repository.count_records_by_key_id(session)

    return RecordCounts(count)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Text exposition format. Needs `Authorization: Bearer <KEYVAULT_METRICS_TOKEN>` "
    "when that setting is given.",
    tags=["health"],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(request: Request) -> Response:
    _check_metrics_token(request.app.state.metrics_token, request.headers.get("authorization"))
    records: RecordCounts = request.app.state.record_counts
    await records.refresh()
    return Response(render(records), media_type=CONTENT_TYPE_LATEST)


def _check_metrics_token(expected: SecretStr | None, header: str | None) -> None:
    if expected is None:
        return
    scheme, _, given = (header or "").partition(" ")
    wanted = expected.get_secret_value().encode("utf-8")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), wanted):
        raise Unauthorized("/metrics needs the metrics bearer token.", error=None)
