"""Enqueue requests and results, queue status and clearing."""

from typing import Any
from uuid import UUID

from pydantic import (
    BaseModel,
)

from mailfleet_api.schemas.common import Body


class RecipientIn(BaseModel):
    # Checked one by one in mailfleet_api.recipients, so a bad address rejects that recipient
    # rather than the whole request.
    email: str
    name: str | None = None
    variables: dict[str, Any] | None = None


class EnqueueRequest(Body):
    campaign_id: UUID
    recipients: list[RecipientIn]


class RejectedRecipient(BaseModel):
    index: int
    email: str
    reason: str


class EnqueueResult(BaseModel):
    campaign_id: UUID
    accepted: int
    rejected_count: int
    rejected: list[RejectedRecipient]


class AccountQueue(BaseModel):
    account_id: UUID
    name: str
    by_status: dict[str, int]


class QueueStatus(BaseModel):
    by_status: dict[str, int]
    by_account: list[AccountQueue]


class QueueClear(Body):
    campaign_id: UUID | None = None


class QueueCleared(BaseModel):
    removed: int
