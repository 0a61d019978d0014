"""Fleet-wide stats."""

from typing import Any
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from mailfleet_api.schemas.accounts import AccountUsage
from mailfleet_api.schemas.common import AccountStatus
from mailfleet_api.schemas.engagement import (
    ACCOUNT_ENGAGEMENT_EXAMPLE,
    CAMPAIGN_ENGAGEMENT_EXAMPLE,
    AccountEngagement,
    CampaignEngagement,
)

_ACCOUNT_TODAY_EXAMPLE: dict[str, Any] = {
    "account_id": "c7e1a9d3-5f2b-4c8e-b6a4-9d3f1e7c5a20",
    "name": "smtp-eu-1",
    "status": "active",
    "usage": {
        "day": "2025-03-14",
        "reserved": 150,
        "sent": 1200,
        "failed": 12,
        "effective_limit": 2000,
    },
}


class AccountToday(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ACCOUNT_TODAY_EXAMPLE]})

    account_id: UUID
    name: str
    status: AccountStatus
    usage: AccountUsage


class Stats(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "messages_by_status": {"queued": 2300, "sent": 48210, "failed": 96},
                    "campaigns_by_status": {"draft": 2, "running": 1, "completed": 14},
                    "accounts": [_ACCOUNT_TODAY_EXAMPLE],
                    "engagement_by_account": [ACCOUNT_ENGAGEMENT_EXAMPLE],
                    "engagement_by_campaign": [CAMPAIGN_ENGAGEMENT_EXAMPLE],
                }
            ]
        }
    )

    messages_by_status: dict[str, int]
    campaigns_by_status: dict[str, int]
    accounts: list[AccountToday]
    engagement_by_account: list[AccountEngagement] = Field(
        description="Each account's engagement across the campaigns of engagement_by_campaign."
    )
    engagement_by_campaign: list[CampaignEngagement] = Field(
        description="Engagement of the newest campaigns that sent anything (campaign_limit)."
    )
