"""Uncertain messages and their resolutions."""

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from mailfleet_api.schemas.common import Body, CursorPage

Resolution = Literal["sent", "resend"]
_MESSAGE_IDS_MAX = 10_000


class UncertainMessage(BaseModel):
    """A message that may or may not have reached the SMTP server; it is never re-sent alone."""

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

    model_config = ConfigDict(extra="forbid")


class UncertainPage(CursorPage[UncertainMessage]):
    pass


class UncertainResolve(Body):
    """Resolve uncertain messages, chosen by `message_ids` or by `filter` (one of them)."""

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

    id: int
    message_id: int
    resolution: Resolution
    resolved_by: str
    resolved_at: datetime
    note: str | None


class UncertainResolutionPage(CursorPage[UncertainResolution]):
    pass
