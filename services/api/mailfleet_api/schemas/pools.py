"""Account pools."""

from pydantic import (
    BaseModel,
    Field,
)

from mailfleet_api.schemas.common import AccountStatus, CampaignStatus, CursorPage


class Pool(BaseModel):
    """The accounts carrying a tag, and the campaigns that send through them."""

    tag: str
    accounts: dict[AccountStatus, int] = Field(description="Accounts in each status.")
    daily_capacity: int = Field(description="Today's limits of the active accounts, summed.")
    remaining_today: int = Field(
        description="What the active accounts can still send today (UTC) under their limits."
    )
    campaigns: dict[CampaignStatus, int] = Field(
        description="Campaigns naming the tag in their pools, in each status."
    )


class PoolPage(CursorPage[Pool]):
    """A page of pools, by tag."""
