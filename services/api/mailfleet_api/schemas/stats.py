"""Fleet-wide stats."""

from uuid import UUID

from pydantic import (
    BaseModel,
    Field,
)

from mailfleet_api.schemas.accounts import AccountUsage
from mailfleet_api.schemas.common import AccountStatus
from mailfleet_api.schemas.engagement import AccountEngagement, CampaignEngagement


class AccountToday(BaseModel):
    account_id: UUID
    name: str
    status: AccountStatus
    usage: AccountUsage


class Stats(BaseModel):
    messages_by_status: dict[str, int]
    campaigns_by_status: dict[str, int]
    accounts: list[AccountToday]
    engagement_by_account: list[AccountEngagement] = Field(
        description="Each account's engagement across the campaigns of engagement_by_campaign."
    )
    engagement_by_campaign: list[CampaignEngagement] = Field(
        description="Engagement of the newest campaigns that sent anything (campaign_limit)."
    )
