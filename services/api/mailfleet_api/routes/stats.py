"""Delivery and engagement statistics for dashboards."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar, cast

from fastapi import APIRouter, Query
from mailfleet_common.db import Conn, Pool

from mailfleet_api import queries, schemas
from mailfleet_api.deps import PoolDep, Viewer

T = TypeVar("T")

router = APIRouter(prefix="/api/admin", tags=["stats"])

CampaignLimit = Annotated[
    int,
    Query(
        ge=0,
        le=500,
        description="Engagement covers this many of the newest campaigns that sent anything.",
    ),
]


@router.get("/stats")
async def stats(pool: PoolDep, _: Viewer, campaign_limit: CampaignLimit = 20) -> schemas.Stats:
    """Messages and campaigns by status, the fleet's usage today (UTC), recent engagement."""
    # Independent reads, each on its own connection: the answer takes the slowest of them
    # rather than their sum.
    by_campaign, by_status, campaigns, today = await asyncio.gather(
        _read(pool, lambda conn: queries.recent_engagement(conn, campaign_limit)),
        _read(pool, queries.count_messages_by_status),
        _read(pool, queries.count_campaigns_by_status),
        _read(pool, queries.fleet_today),
    )
    return schemas.Stats(
        messages_by_status=by_status,
        campaigns_by_status=campaigns,
        today=today,
        engagement_by_campaign=by_campaign,
    )


async def _read(pool: Pool, read: Callable[[Conn], Awaitable[T]]) -> T:
    async with pool.acquire() as conn:
        return await read(cast(Conn, conn))  # a pooled connection proxies a Connection
