"""Anonymous operational endpoints: liveness, readiness and Prometheus metrics."""

import asyncio
import logging
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict

from mailfleet_api.deps import BrokerDep, PoolDep

router = APIRouter(tags=["ops"])
log = logging.getLogger(__name__)

_CHECK_TIMEOUT_S = 2.0


class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


@router.get("/health")
async def health() -> Liveness:
    """Liveness: the process answers."""
    return Liveness(status="ok")


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "ready", "database": True, "broker": True},
                {"status": "not ready", "database": True, "broker": False},
            ]
        }
    )

    status: Literal["ready", "not ready"]
    database: bool
    broker: bool


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is unreachable."}},
)
async def ready(pool: PoolDep, broker: BrokerDep) -> JSONResponse:
    """Readiness: the database answers and the broker is connected."""
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            database = await pool.fetchval("SELECT true") is True
    except Exception:
        log.warning("database not ready", exc_info=True)
        database = False
    broker_ok = await broker.ping(timeout=_CHECK_TIMEOUT_S)
    checks = {"database": database, "broker": broker_ok}
    status = 200 if all(checks.values()) else 503
    return JSONResponse({"status": "ready" if status == 200 else "not ready", **checks}, status)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this process."""
    registry: CollectorRegistry = request.state.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
