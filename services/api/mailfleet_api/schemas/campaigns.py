"""Campaigns: creation, settings, lifecycle."""

from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    model_validator,
)

from mailfleet_api.schemas.common import (
    MAX_SUBJECT_CHARS,
    AccountStatus,
    Body,
    CampaignStatus,
    Moment,
    Name,
    Tags,
    UnsubscribeScope,
    no_nul,
    single_line,
)
from mailfleet_api.schemas.engagement import AccountEngagement, Engagement, Feedback

_TRACKING = "Count opens and clicks of this campaign's messages."
_ACCOUNT_IDS = (
    "Accounts this campaign may send through, by id (at most 1000; for more, tag them and "
    "use pools)."
)
_POOLS = (
    "Tags: the campaign may also send through every active account carrying any of them, "
    "as they are at each assignment (accounts tagged later join, untagged ones leave). With "
    "neither pools nor account_ids, every active account. Each must be carried by an account "
    "that is not archived."
)
_UNSUBSCRIBE_SCOPE = (
    "What a recipient unsubscribing from this campaign's message stops: every campaign "
    "(global) or only this one (campaign)."
)


class CampaignCreate(Body):
    name: Name
    subject: Annotated[
        str, Field(min_length=1, max_length=MAX_SUBJECT_CHARS), AfterValidator(single_line)
    ]
    html_body: Annotated[str, AfterValidator(no_nul)] | None = None
    text_body: Annotated[str, AfterValidator(no_nul)] | None = None
    account_ids: Annotated[list[UUID], Field(max_length=1000)] = Field(
        default=[], description=_ACCOUNT_IDS
    )
    pools: Tags = Field(default=[], description=_POOLS)
    start_at: Moment | None = None
    tracking: bool = Field(default=True, description=_TRACKING)
    unsubscribe_scope: UnsubscribeScope = Field(default="global", description=_UNSUBSCRIBE_SCOPE)

    @model_validator(mode="after")
    def _has_a_body(self) -> "CampaignCreate":
        if not self.html_body and not self.text_body:
            raise ValueError("a campaign needs html_body or text_body")
        return self


class CampaignSummary(BaseModel):
    id: UUID
    owner_id: UUID
    name: str
    subject: str
    account_ids: list[UUID] = Field(description=_ACCOUNT_IDS)
    pools: list[str] = Field(description=_POOLS)
    status: CampaignStatus
    start_at: datetime | None
    tracking: bool = Field(description=_TRACKING)
    unsubscribe_scope: UnsubscribeScope = Field(description=_UNSUBSCRIBE_SCOPE)
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class CampaignPool(BaseModel):
    """The accounts a campaign may send through now (its pool, resolved as the dispatcher does)."""

    every_account: bool = Field(description="Neither pools nor account_ids: every account.")
    accounts: dict[AccountStatus, int] = Field(description="Member accounts in each status.")
    remaining_today: int = Field(
        description="What the active members can still send today (UTC) under their limits."
    )


class Campaign(CampaignSummary):
    html_body: str | None
    text_body: str | None
    messages: dict[str, int] = Field(description="Number of messages in each status.")
    total_messages: int
    pool: CampaignPool


class CampaignUpdate(Body):
    """Only the fields present change."""

    tracking: bool | None = Field(default=None, description=_TRACKING)
    unsubscribe_scope: UnsubscribeScope | None = Field(default=None, description=_UNSUBSCRIBE_SCOPE)
    account_ids: Annotated[list[UUID], Field(max_length=1000)] | None = Field(
        default=None, description=_ACCOUNT_IDS + " Replaces the list, also while running."
    )
    pools: Tags | None = Field(
        default=None, description=_POOLS + " Replaces the list, also while running."
    )

    @model_validator(mode="after")
    def _no_nulls(self) -> "CampaignUpdate":
        for field in self.model_fields_set:
            if getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class CampaignDetail(Campaign):
    engagement: Engagement
    feedback: Feedback
    engagement_by_account: list[AccountEngagement] = Field(
        description="The same figures for each account that sent this campaign's messages."
    )


class CampaignStart(Body):
    start_at: Moment | None = None


class CampaignCancelled(BaseModel):
    campaign: Campaign
    cancelled_messages: int
    released_reservations: int
