"""Delivery and engagement statistics for dashboards."""

from typing import Annotated

from fastapi import APIRouter, Query

from mailfleet_api import queries, schemas
from mailfleet_api.deps import DbConn, Viewer

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
async def stats(conn: DbConn, _: Viewer, campaign_limit: CampaignLimit = 20) -> schemas.Stats:
    """Messages and campaigns by status, usage today (UTC), and recent engagement."""
    by_account, by_campaign = await queries.recent_engagement(conn, campaign_limit)
    return schemas.Stats(
        messages_by_status=await queries.count_messages_by_status(conn),
        campaigns_by_status=await queries.count_campaigns_by_status(conn),
        accounts=await queries.usage_today(conn),
        engagement_by_account=by_account,
        engagement_by_campaign=by_campaign,
    )
