"""Enqueue requests and results, queue status and clearing."""

from typing import Any
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
)

from mailfleet_api.schemas.common import Body

_RECIPIENT_EXAMPLE: dict[str, Any] = {
    "email": "ada@example.org",
    "name": "Ada",
    "variables": {"plan": "pro"},
}
_ACCOUNT_QUEUE_EXAMPLE: dict[str, Any] = {
    "account_id": "c7e1a9d3-5f2b-4c8e-b6a4-9d3f1e7c5a20",
    "name": "smtp-eu-1",
    "by_status": {"assigned": 150, "sending": 4, "sent": 1200, "failed": 12},
}


class RecipientIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_RECIPIENT_EXAMPLE]})

    # Checked one by one in mailfleet_api.recipients, so a bad address rejects that recipient
    # rather than the whole request.
    email: str
    name: str | None = None
    variables: dict[str, Any] | None = None


class EnqueueRequest(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "campaign_id": "0b6c2f4e-8d1a-4e57-9c3b-5a7d2e9f1c48",
                    "recipients": [_RECIPIENT_EXAMPLE, {"email": "grace@example.com"}],
                }
            ]
        }
    )

    campaign_id: UUID
    recipients: list[RecipientIn]


class RejectedRecipient(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"index": 2, "email": "bob@", "reason": "invalid email"}]}
    )

    index: int
    email: str
    reason: str


class EnqueueResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "campaign_id": "0b6c2f4e-8d1a-4e57-9c3b-5a7d2e9f1c48",
                    "accepted": 2,
                    "rejected_count": 1,
                    "rejected": [
                        {"index": 2, "email": "carol@example.net", "reason": "suppressed"}
                    ],
                }
            ]
        }
    )

    campaign_id: UUID
    accepted: int
    rejected_count: int
    rejected: list[RejectedRecipient]


class AccountQueue(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ACCOUNT_QUEUE_EXAMPLE]})

    account_id: UUID
    name: str
    by_status: dict[str, int]


class QueueStatus(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "by_status": {"queued": 2300, "assigned": 150, "sending": 4, "sent": 1200},
                    "by_account": [_ACCOUNT_QUEUE_EXAMPLE],
                }
            ]
        }
    )

    by_status: dict[str, int]
    by_account: list[AccountQueue]


class QueueClear(Body):
    """Which failed messages to delete: one campaign's, or (no campaign_id) all."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"campaign_id": "0b6c2f4e-8d1a-4e57-9c3b-5a7d2e9f1c48"}]}
    )

    campaign_id: UUID | None = None


class QueueCleared(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"removed": 12}]})

    removed: int
