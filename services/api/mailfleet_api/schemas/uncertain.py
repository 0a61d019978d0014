"""Uncertain messages and their resolutions."""

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from mailfleet_api.schemas.common import Body, CursorPage, page_config

Resolution = Literal["sent", "resend"]
_MESSAGE_IDS_MAX = 10_000

_MESSAGE_EXAMPLE: dict[str, Any] = {
    "id": 48213,
    "campaign_id": "0b6c2f4e-8d1a-4e57-9c3b-5a7d2e9f1c48",
    "account_id": "c7e1a9d3-5f2b-4c8e-b6a4-9d3f1e7c5a20",
    "email": "ada@example.org",
    "message_id": "<48213.0b6c2f4e@mail.example.com>",
    "attempts": 1,
    "sender_replica": "sender-7f9c4d-2xkq8",
    "last_code": None,
    "last_error": "connection lost after DATA",
    "flagged_at": "2025-03-12T07:05:41Z",
}
_RESOLUTION_EXAMPLE: dict[str, Any] = {
    "id": 311,
    "message_id": 48213,
    "resolution": "sent",
    "resolved_by": "api:user:3f1e9a52-7c4d-4b8e-a1f6-2d9c0e5b7a13",
    "resolved_at": "2025-03-12T08:00:00Z",
    "note": "found in the provider's sent log",
}


class UncertainMessage(BaseModel):
    """A message that may or may not have reached the SMTP server; it is never re-sent alone."""

    model_config = ConfigDict(json_schema_extra={"examples": [_MESSAGE_EXAMPLE]})

    id: int
    campaign_id: UUID
    account_id: UUID | None
    email: str
    message_id: str | None = Field(
        description="The Message-ID header it went out with: look for it at the provider."
    )
    attempts: int
    sender_replica: str | None = Field(description="The sender replica that had it in hand.")
    last_code: int | None
    last_error: str | None
    flagged_at: datetime = Field(description="When it became uncertain.")


class UncertainFilter(BaseModel):
    """Which uncertain messages: all given must match."""

    campaign_id: UUID | None = None
    account_id: UUID | None = None
    sender_replica: str | None = Field(default=None, max_length=100)
    flagged_after: AwareDatetime | None = Field(default=None, description="At or after.")
    flagged_before: AwareDatetime | None = Field(default=None, description="Before.")


class UncertainSelection(UncertainFilter):
    """The filter of a bulk resolution: a misspelt field is refused rather than ignored.

    Ignoring it would widen the selection: `{"campain_id": ...}` would resolve every message.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "sender_replica": "sender-7f9c4d-2xkq8",
                    "flagged_after": "2025-03-12T07:00:00Z",
                    "flagged_before": "2025-03-12T07:10:00Z",
                }
            ]
        },
    )


class UncertainPage(CursorPage[UncertainMessage]):
    """A page of uncertain messages, newest first."""

    model_config = page_config(_MESSAGE_EXAMPLE, "MjAyNS0wMy0xMlQwNzowNTo0MSswMDowMHw0ODIxMw")


class UncertainResolve(Body):
    """Resolve uncertain messages, chosen by `message_ids` or by `filter` (one of them)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "resolution": "sent",
                    "message_ids": [48213],
                    "note": "found in the provider's sent log",
                },
                {
                    "resolution": "resend",
                    "filter": {"sender_replica": "sender-7f9c4d-2xkq8"},
                    "accept_duplicate_risk": True,
                    "note": "replica killed mid-batch; provider has no record",
                },
            ]
        }
    )

    resolution: Resolution = Field(
        description="sent: it did arrive, mark it delivered. resend: queue it again with the "
        "same Message-ID (the recipient may get it twice)."
    )
    message_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None = Field(
        default=None, min_length=1, max_length=_MESSAGE_IDS_MAX
    )
    filter: UncertainSelection | None = Field(
        default=None, description="Every uncertain message matching it; {} means all of them."
    )
    accept_duplicate_risk: bool = Field(
        default=False, description="Must be true to resend: the first attempt may have arrived."
    )
    note: str | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _one_choice_and_explicit_risk(self) -> "UncertainResolve":
        if (self.message_ids is None) == (self.filter is None):
            raise ValueError("give either message_ids or filter")
        if self.resolution == "resend" and not self.accept_duplicate_risk:
            raise ValueError(
                "resending may deliver a message twice: set accept_duplicate_risk to true"
            )
        return self


class UncertainResolved(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "resolution": "sent",
                    "resolved": 1,
                    "message_ids": [48213],
                    "not_uncertain": [],
                    "resolved_by": "api:user:3f1e9a52-7c4d-4b8e-a1f6-2d9c0e5b7a13",
                    "resolved_at": "2025-03-12T08:00:00Z",
                }
            ]
        }
    )

    resolution: Resolution
    resolved: int = Field(description="Messages resolved by this call.")
    message_ids: list[int] = Field(description="Their ids (the first 10,000).")
    not_uncertain: list[int] = Field(
        description="Ids given that are not uncertain (any more): nothing was done to them."
    )
    resolved_by: str = Field(description="api:user:<id> or api:key:<id>.")
    resolved_at: datetime


class UncertainResolution(BaseModel):
    """Who resolved an uncertain message, how and when."""

    model_config = ConfigDict(json_schema_extra={"examples": [_RESOLUTION_EXAMPLE]})

    id: int
    message_id: int
    resolution: Resolution
    resolved_by: str
    resolved_at: datetime
    note: str | None


class UncertainResolutionPage(CursorPage[UncertainResolution]):
    """A page of resolutions, newest first."""

    model_config = page_config(_RESOLUTION_EXAMPLE)
