"""Campaigns: creation, settings, lifecycle."""

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from mailfleet_api.schemas.common import (
    MAX_SUBJECT_CHARS,
    AccountStatus,
    Body,
    CampaignStatus,
    CursorPage,
    Moment,
    Name,
    Tags,
    UnsubscribeScope,
    no_nul,
    page_config,
    single_line,
)
from mailfleet_api.schemas.engagement import (
    ACCOUNT_ENGAGEMENT_EXAMPLE,
    ENGAGEMENT_EXAMPLE,
    FEEDBACK_EXAMPLE,
    AccountEngagement,
    Engagement,
    Feedback,
)

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


_SUMMARY_EXAMPLE: dict[str, Any] = {
    "id": "0b6c2f4e-8d1a-4e57-9c3b-5a7d2e9f1c48",
    "owner_id": "3f1e9a52-7c4d-4b8e-a1f6-2d9c0e5b7a13",
    "name": "March newsletter",
    "subject": "What's new in March, {{ name }}",
    "account_ids": [],
    "pools": ["newsletter"],
    "status": "running",
    "start_at": None,
    "tracking": True,
    "unsubscribe_scope": "global",
    "created_at": "2025-03-14T09:30:00Z",
    "updated_at": "2025-03-14T09:41:12Z",
    "completed_at": None,
}
_POOL_EXAMPLE: dict[str, Any] = {
    "every_account": False,
    "accounts": {"active": 3, "paused": 1},
    "remaining_today": 4150,
}
# The campaign as the API shows it, with the bodies and its messages by status.
CAMPAIGN_EXAMPLE: dict[str, Any] = {
    **_SUMMARY_EXAMPLE,
    "html_body": "<p>Hi {{ name }},</p><p>Here is what changed in March.</p>",
    "text_body": "Hi {{ name }},\n\nHere is what changed in March.",
    "messages": {"queued": 2300, "assigned": 150, "sending": 4, "sent": 1200, "failed": 12},
    "total_messages": 3666,
    "pool": _POOL_EXAMPLE,
}


class CampaignCreate(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "March newsletter",
                    "subject": "What's new in March, {{ name }}",
                    "html_body": "<p>Hi {{ name }},</p><p>Here is what changed in March.</p>",
                    "text_body": "Hi {{ name }},\n\nHere is what changed in March.",
                    "pools": ["newsletter"],
                    "tracking": True,
                    "unsubscribe_scope": "global",
                }
            ]
        }
    )

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
    model_config = ConfigDict(json_schema_extra={"examples": [_SUMMARY_EXAMPLE]})

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


class CampaignPage(CursorPage[CampaignSummary]):
    """A page of campaigns, newest first."""

    model_config = page_config(
        _SUMMARY_EXAMPLE,
        "MjAyNS0wMy0xNFQwOTozMDowMCswMDowMHwwYjZjMmY0ZS04ZDFhLTRlNTctOWMzYi01YTdkMmU5ZjFjNDg",
    )


class CampaignPool(BaseModel):
    """The accounts a campaign may send through now (its pool, resolved as the dispatcher does)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_POOL_EXAMPLE]})

    every_account: bool = Field(description="Neither pools nor account_ids: every account.")
    accounts: dict[AccountStatus, int] = Field(description="Member accounts in each status.")
    remaining_today: int = Field(
        description="What the active members can still send today (UTC) under their limits."
    )


class Campaign(CampaignSummary):
    model_config = ConfigDict(json_schema_extra={"examples": [CAMPAIGN_EXAMPLE]})

    html_body: str | None
    text_body: str | None
    messages: dict[str, int] = Field(description="Number of messages in each status.")
    total_messages: int
    pool: CampaignPool


class CampaignUpdate(Body):
    """Only the fields present change."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"pools": ["newsletter", "eu"], "unsubscribe_scope": "campaign"},
                {"account_ids": ["c7e1a9d3-5f2b-4c8e-b6a4-9d3f1e7c5a20"]},
            ]
        }
    )

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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **CAMPAIGN_EXAMPLE,
                    "engagement": ENGAGEMENT_EXAMPLE,
                    "feedback": FEEDBACK_EXAMPLE,
                    "engagement_by_account": [ACCOUNT_ENGAGEMENT_EXAMPLE],
                }
            ]
        }
    )

    engagement: Engagement
    feedback: Feedback
    engagement_by_account: list[AccountEngagement] = Field(
        description="The same figures for each account that sent this campaign's messages."
    )


class CampaignStart(Body):
    """Start now, or at start_at."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"start_at": "2025-03-17T08:00:00Z"}]}
    )

    start_at: Moment | None = None


class CampaignCancelled(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "campaign": {
                        **CAMPAIGN_EXAMPLE,
                        "status": "cancelled",
                        "messages": {"sending": 4, "sent": 1200, "failed": 12, "cancelled": 2450},
                    },
                    "cancelled_messages": 2450,
                    "released_reservations": 150,
                }
            ]
        }
    )

    campaign: Campaign
    cancelled_messages: int
    released_reservations: int
