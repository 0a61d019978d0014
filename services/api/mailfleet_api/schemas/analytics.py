"""Analytics: event counters per hour or day, of the fleet, a campaign or an account."""

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

BucketSize = Literal["hour", "day"]

_COUNTS_EXAMPLE: dict[str, Any] = {
    "sent": 1200, "failed": 4, "deferred": 11, "bounces": 9, "hard_bounces": 6,
    "complaints": 1, "replies": 3, "unsubscribes": 2, "opens": 610, "unique_opens": 402,
    "human_opens": 480, "unique_human_opens": 350, "clicks": 95, "unique_clicks": 71,
    "human_clicks": 80, "unique_human_clicks": 64,
}  # fmt: skip


class Counts(BaseModel):
    """What was recorded in a period.

    Opens and clicks count every hit (machine-made ones too; the `human_*` figures leave those
    out); the `unique_*` figures and `unsubscribes` count messages, each in the period of its
    first such event.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [_COUNTS_EXAMPLE]})

    sent: int = Field(description="Messages the receiving server accepted.")
    failed: int = Field(description="Messages that failed for good.")
    deferred: int = Field(description="Attempts answered 4xx, to be retried.")
    bounces: int = Field(description="Bounces read from the accounts' mailboxes.")
    hard_bounces: int = Field(description="Bounces saying the address is bad.")
    complaints: int = Field(description="Spam complaints (feedback loops).")
    replies: int = Field(description="Replies from a person.")
    unsubscribes: int = Field(description="Messages unsubscribed from.")
    opens: int = Field(description="Open events.")
    unique_opens: int = Field(description="Messages first opened.")
    human_opens: int = Field(description="Open events not flagged as machine-made.")
    unique_human_opens: int = Field(description="Messages first opened by a person.")
    clicks: int = Field(description="Click events.")
    unique_clicks: int = Field(description="Messages first clicked.")
    human_clicks: int = Field(description="Click events not flagged as machine-made.")
    unique_human_clicks: int = Field(description="Messages first clicked by a person.")


class BucketCounts(Counts):
    """The counts of one hour or UTC day."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"start": "2025-03-01T00:00:00Z", **_COUNTS_EXAMPLE}]}
    )

    start: datetime = Field(description="Where the bucket starts (UTC).")


class Timeline(BaseModel):
    """Counts per bucket over a period, and their totals."""

    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "campaign_id": None,
                    "account_id": None,
                    "from": "2025-03-01T00:00:00Z",
                    "to": "2025-03-02T00:00:00Z",
                    "bucket": "day",
                    "totals": _COUNTS_EXAMPLE,
                    "buckets": [{"start": "2025-03-01T00:00:00Z", **_COUNTS_EXAMPLE}],
                }
            ]
        },
    )

    campaign_id: UUID | None = Field(description="The campaign counted; null: every one.")
    account_id: UUID | None = Field(description="The account counted; null: every one.")
    from_: datetime = Field(alias="from", description="Start of the first bucket (UTC).")
    to: datetime = Field(description="End of the period (exclusive), as asked.")
    bucket: BucketSize
    totals: Counts
    buckets: list[BucketCounts] = Field(description="Every bucket of the period, oldest first.")
