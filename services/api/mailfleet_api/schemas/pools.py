"""Account pools."""

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from mailfleet_api.schemas.common import AccountStatus, CampaignStatus, CursorPage, page_config

_POOL_EXAMPLE: dict[str, Any] = {
    "tag": "eu",
    "accounts": {"active": 4, "paused": 1, "disabled": 0, "archived": 0},
    "daily_capacity": 20000,
    "remaining_today": 13250,
    "campaigns": {"draft": 1, "running": 2, "paused": 0, "cancelled": 0, "completed": 7},
}


class Pool(BaseModel):
    """The accounts carrying a tag, and the campaigns that send through them."""

    model_config = ConfigDict(json_schema_extra={"examples": [_POOL_EXAMPLE]})

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

    model_config = page_config(_POOL_EXAMPLE, "ZXU")
