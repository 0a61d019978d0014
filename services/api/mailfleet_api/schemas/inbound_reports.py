"""Bounces, complaints and replies read from the accounts' mailboxes."""

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from mailfleet_api.schemas.common import CursorPage, InboundKind, Moment, page_config

_DETAIL_EXAMPLE: dict[str, Any] = {
    "address": "gone@example.org",
    "bounce": "hard",
    "status": "5.1.1",
    "diagnostic": "smtp; 550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown",
    "action_field": "failed",
    "reason": "the mailbox does not exist (5.1.1)",
    "message_id": 48213,
    "campaign_id": "0b6c2f4e-8d1a-4e57-9c3b-5a7d2e9f1c48",
    "matched_by": "message-id",
    "action": "suppressed:hard-bounce",
    "feedback_type": None,
}
_REPORT_EXAMPLE: dict[str, Any] = {
    "id": 9121,
    "account_id": "c7e1a9d3-5f2b-4c8e-b6a4-9d3f1e7c5a20",
    "kind": "bounce",
    "parser": "rfc3464",
    "sender": "MAILER-DAEMON@mx.example.org",
    "subject": "Undelivered Mail Returned to Sender",
    "size": 6242,
    "truncated": False,
    "matched": 1,
    "problem": None,
    "details": [_DETAIL_EXAMPLE],
    "received_at": "2025-03-14T09:31:07Z",
    "published": True,
    "has_raw": False,
}


class InboundDetail(BaseModel):
    """What a report says about one recipient, and what was done about it."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [_DETAIL_EXAMPLE]})

    address: str | None = None
    bounce: Literal["hard", "soft"] | None = None
    status: str | None = Field(default=None, description="The DSN status code, e.g. 5.1.1.")
    diagnostic: str | None = Field(default=None, description="The receiving server's words.")
    action_field: str | None = Field(default=None, description="The DSN Action field.")
    reason: str | None = Field(
        default=None,
        description="Why the verdict is hard or soft, in words.",
    )
    message_id: int | None = Field(default=None, description="Our message it was matched to.")
    campaign_id: UUID | None = None
    matched_by: str | None = Field(default=None, description="How the message was found.")
    action: str | None = Field(default=None, description="What was done, e.g. suppressed:...")
    feedback_type: str | None = Field(default=None, description="The ARF Feedback-Type.")


class InboundReport(BaseModel):
    """One message the bouncer read from an account's mailbox."""

    model_config = ConfigDict(json_schema_extra={"examples": [_REPORT_EXAMPLE]})

    id: int
    account_id: UUID
    kind: InboundKind
    parser: str | None = Field(description="How it was recognised: rfc3464, arf, heuristic...")
    sender: str | None
    subject: str | None
    size: int = Field(description="Its size in bytes.")
    truncated: bool = Field(description="It was larger than the bouncer reads; only a part was.")
    matched: int = Field(description="Recipients matched to one of our messages.")
    problem: str | None = Field(
        description="What could not be made sense of (malformed MIME, why it is unrecognized); "
        "null: nothing."
    )
    details: list[InboundDetail] = Field(description="One entry per recipient it concerns.")
    received_at: datetime
    published: bool = Field(description="Its feedback went out on the bus.")
    has_raw: bool = Field(
        description="The message was kept (unrecognized ones are, up to a size cap): see /raw."
    )


class InboundReportFilter(BaseModel):
    """Filters of the inbound report list; all given must match."""

    account_id: UUID | None = None
    kind: InboundKind | None = None
    matched: bool | None = Field(
        default=None, description="true: matched at least one of our messages; false: none."
    )
    problem: bool | None = Field(
        default=None, description="true: it has a problem noted; false: it has none."
    )
    received_after: Moment | None = Field(default=None, description="Read at or after.")
    received_before: Moment | None = Field(default=None, description="Read before.")


class InboundReportPage(CursorPage[InboundReport]):
    """A page of inbound reports, newest first."""

    model_config = page_config(_REPORT_EXAMPLE, "MjAyNS0wMy0xNFQwOTozMTowNyswMDowMHw5MTIx")
