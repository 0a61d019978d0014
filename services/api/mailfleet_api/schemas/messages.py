"""Messages: the list and its filters, one message's attempts, returns and tracking hits."""

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from mailfleet_api.schemas.common import CursorPage, Moment

MessageStatus = Literal[
    "queued", "assigned", "sending", "sent", "deferred", "failed", "uncertain", "cancelled"
]
_CAMPAIGN = "0b7e8c52-3f0a-4c55-9a8f-2a1c3d4e5f60"
_ACCOUNT = "5d2f1e0a-8b9c-4d3e-a1f2-b3c4d5e6f708"

_MESSAGE_EXAMPLE: dict[str, Any] = {
    "id": 1234567,
    "campaign_id": _CAMPAIGN,
    "account_id": _ACCOUNT,
    "email": "ada@example.com",
    "name": "Ada",
    "status": "sent",
    "attempts": 2,
    "message_id": "<1234567.a1b2c3@mail.example.com>",
    "last_code": 250,
    "last_error": None,
    "bounce": None,
    "created_at": "2025-03-01T09:00:00Z",
    "updated_at": "2025-03-01T09:02:10Z",
    "next_attempt_at": None,
    "sent_at": "2025-03-01T09:02:10Z",
    "bounced_at": None,
    "complained_at": None,
    "replied_at": None,
}
_ATTEMPT_EXAMPLE: dict[str, Any] = {
    "attempt": 1,
    "outcome": "deferred",
    "smtp_code": 451,
    "detail": "4.7.1 Try again later",
    "attempted_at": "2025-03-01T09:00:05Z",
    "since_enqueued_s": 5.0,
    "since_previous_s": None,
}


class MessageFilter(BaseModel):
    """Which messages: all given must match. With a `sent_*` bound, the list is by sent time."""

    campaign_id: UUID | None = None
    account_id: UUID | None = None
    status: MessageStatus | None = None
    email: str | None = Field(
        default=None, max_length=320, description="The address, exactly (any letter case)."
    )
    created_after: Moment | None = Field(default=None, description="Enqueued at or after.")
    created_before: Moment | None = Field(default=None, description="Enqueued before.")
    sent_after: Moment | None = Field(default=None, description="Sent at or after.")
    sent_before: Moment | None = Field(default=None, description="Sent before.")

    @property
    def by_sent(self) -> bool:
        """Whether the list is ordered by sent time (a sent bound was given)."""
        return self.sent_after is not None or self.sent_before is not None


class CampaignResultFilter(BaseModel):
    """Which of a campaign's messages: all given must match."""

    status: MessageStatus | None = None
    email: str | None = Field(default=None, max_length=320)
    sent_after: Moment | None = Field(default=None, description="Sent at or after.")
    sent_before: Moment | None = Field(default=None, description="Sent before.")


class Message(BaseModel):
    """One recipient's message: where it is in delivery, and what came back."""

    model_config = ConfigDict(json_schema_extra={"examples": [_MESSAGE_EXAMPLE]})

    id: int
    campaign_id: UUID
    account_id: UUID | None = Field(description="The account it went, or goes, through.")
    email: str
    name: str | None
    status: MessageStatus
    attempts: int
    message_id: str | None = Field(description="The Message-ID header it went out with.")
    last_code: int | None = Field(description="The SMTP reply code of the last attempt.")
    last_error: str | None
    bounce: Literal["hard", "soft"] | None = Field(description="A bounce read after sending.")
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    sent_at: datetime | None
    bounced_at: datetime | None
    complained_at: datetime | None
    replied_at: datetime | None


class MessagePage(CursorPage[Message]):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [_MESSAGE_EXAMPLE], "limit": 50, "next_cursor": "MjAyNS0w"}]
        }
    )


class SendAttemptShown(BaseModel):
    """One SMTP attempt: its outcome, the server's reply and when."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ATTEMPT_EXAMPLE]})

    attempt: int
    outcome: Literal["sent", "deferred", "failed", "uncertain"]
    smtp_code: int | None
    detail: str | None = Field(description="The server's reply text, or what went wrong.")
    attempted_at: datetime
    since_enqueued_s: float = Field(description="Seconds from enqueueing to this attempt.")
    since_previous_s: float | None = Field(description="Seconds since the previous attempt.")


class FeedbackShown(BaseModel):
    """A bounce, complaint, reply, auto-reply or mailed unsubscribe read by the bouncer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "bounced",
                    "occurred_at": "2025-03-01T09:05:00Z",
                    "report_id": 42,
                    "bounce": "hard",
                    "status": "5.1.1",
                    "diagnostic": "smtp; 550 5.1.1 <ada@example.com>: user unknown",
                    "reason": "5.1.1 bad mailbox",
                    "feedback_type": None,
                    "action": "suppressed:hard-bounce",
                    "matched_by": "message-id",
                }
            ]
        }
    )

    type: str = Field(description="bounced, complained, replied, auto-replied, unsubscribed.")
    occurred_at: datetime
    report_id: int | None = Field(description="The inbound report it was read from.")
    bounce: Literal["hard", "soft"] | None = None
    status: str | None = Field(default=None, description="RFC 3463 status, e.g. 5.1.1.")
    diagnostic: str | None = None
    reason: str | None = None
    feedback_type: str | None = Field(default=None, description="A complaint's ARF type.")
    action: str | None = Field(default=None, description="What was done about it.")
    matched_by: str | None = None


class TrackingShown(BaseModel):
    """An open, click or unsubscribe through the tracker.

    `ip` as the API's privacy setting allows: whole, its network (/24 or /48) or none.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "clicked",
                    "occurred_at": "2025-03-01T10:00:00Z",
                    "ip": "198.51.100.0",
                    "user_agent": "Mozilla/5.0 (Macintosh)",
                    "url": "https://example.com/spring",
                    "machine": False,
                    "machine_reason": None,
                }
            ]
        }
    )

    type: Literal["opened", "clicked", "unsubscribed"]
    occurred_at: datetime
    ip: str | None
    user_agent: str | None
    url: str | None = Field(description="Clicks: where the recipient was sent.")
    machine: bool = Field(description="A privacy proxy or link scanner, not a person.")
    machine_reason: str | None


class MessageDetail(Message):
    """A message with every SMTP attempt, what came back, and its opens and clicks."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                _MESSAGE_EXAMPLE
                | {
                    "send_attempts": [_ATTEMPT_EXAMPLE],
                    "feedback": [],
                    "tracking": [],
                    "tracking_total": 0,
                }
            ]
        }
    )

    send_attempts: list[SendAttemptShown]
    feedback: list[FeedbackShown]
    tracking: list[TrackingShown] = Field(description="Newest first, at most 500.")
    tracking_total: int = Field(description="How many tracking hits there are in all.")
