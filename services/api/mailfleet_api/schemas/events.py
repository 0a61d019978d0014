"""Events: the history of everything that happened, and the live feed of it."""

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from mailfleet_api.schemas.common import CursorPage, Moment

_EVENT_EXAMPLE: dict[str, Any] = {
    "id": 9876543,
    "occurred_at": "2025-03-01T10:00:00Z",
    "type": "opened",
    "campaign_id": "0b7e8c52-3f0a-4c55-9a8f-2a1c3d4e5f60",
    "message_id": 1234567,
    "account_id": "5d2f1e0a-8b9c-4d3e-a1f2-b3c4d5e6f708",
    "data": {"ip": "198.51.100.0", "user_agent": "Mozilla/5.0", "machine": False},
}
EventType = Field(
    default=None,
    max_length=64,
    description="sent, deferred, failed, uncertain, opened, clicked, unsubscribed, bounced, "
    "complained, replied, auto-replied, account-paused, uncertain-resolved, ...",
)


class EventFilter(BaseModel):
    """Which events: all given must match."""

    type: str | None = EventType
    campaign_id: UUID | None = None
    account_id: UUID | None = None
    message_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    occurred_after: Moment | None = Field(default=None, description="At or after.")
    occurred_before: Moment | None = Field(default=None, description="Before.")


class FeedFilter(BaseModel):
    """Which events the feed passes on: all given must match."""

    type: str | None = EventType
    campaign_id: UUID | None = None


class Event(BaseModel):
    """Something that happened to a message, campaign or account.

    `data` depends on the type: an attempt's `smtp_code` and `detail`, a tracking hit's `ip`
    (as the privacy setting allows), `user_agent`, `url` and `machine`, a bounce's report...
    """

    model_config = ConfigDict(json_schema_extra={"examples": [_EVENT_EXAMPLE]})

    id: int
    occurred_at: datetime
    type: str
    campaign_id: UUID | None
    message_id: int | None
    account_id: UUID | None
    data: dict[str, Any]


class EventPage(CursorPage[Event]):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [_EVENT_EXAMPLE], "limit": 50, "next_cursor": "MjAyNS0w"}]
        }
    )


class EventFeed(BaseModel):
    """New events, oldest first; ask again with `next_cursor` for the ones after them."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_EVENT_EXAMPLE], "next_cursor": "WzEyM10"}]}
    )

    items: list[Event]
    next_cursor: str = Field(
        description="Pass as `after` to continue; the same as given when nothing is new."
    )
