"""Delivery statistics for dashboards."""

from fastapi import APIRouter

from mailfleet_api import queries, schemas
from mailfleet_api.deps import DbConn, Viewer

router = APIRouter(prefix="/api/admin", tags=["stats"])


@router.get("/stats")
async def stats(conn: DbConn, _: Viewer) -> schemas.Stats:
    """Messages and campaigns by status, and each account's usage today (UTC)."""
    return schemas.Stats(
        messages_by_status=await queries.count_messages_by_status(conn),
        campaigns_by_status=await queries.count_campaigns_by_status(conn),
        accounts=await queries.usage_today(conn),
    )
