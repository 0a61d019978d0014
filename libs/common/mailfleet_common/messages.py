"""The bus contract: every event and command that crosses a service boundary."""

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class RecipientsEnqueued(_Message):
    """api -> dispatcher: a campaign has new queued messages; dispatch them soon."""

    campaign_id: UUID
    count: int = Field(ge=0)
    # Transactional messages: the dispatcher's transactional lane assigns them at once.
    transactional: bool = False


class SendBatch(_Message):
    """dispatcher -> sender: deliver these messages through this account now, in order.

    A command may arrive twice (a sweep re-dispatch, a redelivery after a replica died): the
    sender's compare-and-set claim makes every repeat a no-op.
    """

    account_id: UUID
    message_ids: list[int] = Field(min_length=1, max_length=10_000)
    dispatched_at: datetime
    # Tracing on: the W3C traceparent of each traced message's dispatch, by message id. Each
    # message continues its own trace (the enqueue's), so one header could not carry them.
    traces: dict[int, str] | None = None


class UrgentSends(_Message):
    """dispatcher -> every sender replica: send these next, if you are busy with the account.

    A notice, not a command: the messages' SendBatch follows on the account's queue as usual
    and skips what was claimed meanwhile, so a notice lost or ignored only costs time.
    """

    account_id: UUID
    message_ids: list[int] = Field(min_length=1, max_length=10_000)


Outcome = Literal["sent", "deferred", "failed", "uncertain"]


class SendAttempt(_Message):
    """One SMTP attempt and its outcome."""

    message_id: int
    campaign_id: UUID
    account_id: UUID
    attempt: int = Field(ge=1)
    outcome: Outcome
    smtp_code: int | None = None
    detail: str | None = None
    attempted_at: datetime


class SendAttempts(_Message):
    """sender -> dispatcher: the attempts one sender finished since its last report.

    Batched because one bus message per email per hop costs more CPU than the email itself.
    """

    attempts: list[SendAttempt] = Field(min_length=1)


class AccountPaused(_Message):
    """sender or dispatcher -> anyone: an account was paused automatically, and why."""

    account_id: UUID
    reason: str
    paused_at: datetime


class MessagesUncertain(_Message):
    """dispatcher -> anyone: these messages may or may not have been delivered.

    Their sender died between claiming them and recording the SMTP outcome. They are never
    re-sent automatically: an operator decides.
    """

    message_ids: list[int] = Field(min_length=1)
    found_at: datetime


TrackingKind = Literal["opened", "clicked", "unsubscribed"]


class TrackingHit(_Message):
    """One request to a tracking URL, as the tracker saw it."""

    # Unique per hit (tracker instance + sequence): a redelivered batch is recorded once.
    key: str = Field(min_length=1, max_length=64)
    message_id: int = Field(ge=1)
    occurred_at: datetime
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=512)
    url: str | None = None  # clicks: where the recipient was sent
    # Mail-privacy proxies and link scanners: recorded, but kept out of the human rates.
    machine: bool = False
    machine_reason: str | None = Field(default=None, max_length=64)
    # Tracing on: the W3C traceparent of the request that made the hit, for the recorder.
    traceparent: str | None = Field(default=None, max_length=64)


class TrackingHits(_Message):
    """tracker -> dispatcher: opens, clicks or unsubscribes, batched by kind.

    Routed by the kind (``opened``, ``clicked``, ``unsubscribed``). Hits are batched because one
    bus message per pixel request would cost more than serving the pixel.
    """

    kind: TrackingKind
    hits: list[TrackingHit] = Field(min_length=1, max_length=10_000)


FeedbackKind = Literal["bounced", "complained", "replied", "auto-replied", "unsubscribed"]


class Feedback(_Message):
    """bouncer -> anyone: what came back for a message, read from its account's mailbox.

    Routed by the kind. The bouncer has already acted on it (suppression, marking the message,
    pausing the account) and recorded it in ``events`` before this is published; the bus copy is
    for whoever else wants to know. ``key`` is unique per report and recipient, so a consumer
    can drop a redelivery.
    """

    key: str = Field(min_length=1, max_length=64)
    kind: FeedbackKind
    account_id: UUID
    report_id: int = Field(ge=1)
    message_id: int | None = None  # None: no message of ours could be matched
    campaign_id: UUID | None = None
    email: str | None = None
    bounce: Literal["hard", "soft"] | None = None
    status: str | None = None  # RFC 3463 enhanced status code, e.g. "5.1.1"
    diagnostic: str | None = None
    feedback_type: str | None = None  # complaints: the ARF Feedback-Type
    occurred_at: datetime
