"""Fleet-wide stats."""

from datetime import date
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from mailfleet_api.schemas.common import AccountStatus
from mailfleet_api.schemas.engagement import CAMPAIGN_ENGAGEMENT_EXAMPLE, CampaignEngagement

_TODAY_EXAMPLE: dict[str, Any] = {
    "day": "2025-03-14",
    "accounts_by_status": {"active": 48, "paused": 2},
    "reserved": 1500,
    "sent": 12000,
    "failed": 120,
    "effective_limit": 96000,
}


class FleetToday(BaseModel):
    """Today's (UTC) usage of the fleet: every account that is not archived, summed."""

    model_config = ConfigDict(json_schema_extra={"examples": [_TODAY_EXAMPLE]})

    day: date
    accounts_by_status: dict[AccountStatus, int]
    reserved: int = Field(description="Units reserved today (assigned, being or already sent).")
    sent: int
    failed: int
    effective_limit: int = Field(
        description="Today's limits of the active accounts (warm-up included), summed."
    )


class Stats(BaseModel):
    """The fleet at a glance.

    Each account's own figures: GET /api/admin/accounts (today's usage), GET
    /api/analytics/accounts/{id} (sends, feedback and engagement).
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "messages_by_status": {"queued": 2300, "sent": 48210, "failed": 96},
                    "campaigns_by_status": {"draft": 2, "running": 1, "completed": 14},
                    "today": _TODAY_EXAMPLE,
                    "engagement_by_campaign": [CAMPAIGN_ENGAGEMENT_EXAMPLE],
                }
            ]
        }
    )

    messages_by_status: dict[str, int]
    campaigns_by_status: dict[str, int]
    today: FleetToday
    engagement_by_campaign: list[CampaignEngagement] = Field(
        description="Engagement of the newest campaigns that sent anything (campaign_limit)."
    )
