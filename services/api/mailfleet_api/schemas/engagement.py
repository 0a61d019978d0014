"""Engagement and feedback figures of campaigns and accounts, account health."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from mailfleet_api.schemas.common import AccountStatus, CampaignStatus, InboundKind

# Figures of 1,200 sent messages, reused by the examples of the models that embed them.
ENGAGEMENT_EXAMPLE: dict[str, Any] = {
    "sent": 1200,
    "opens": 640,
    "unique_opens": 480,
    "human_opens": 410,
    "unique_human_opens": 350,
    "clicks": 150,
    "unique_clicks": 120,
    "human_clicks": 110,
    "unique_human_clicks": 96,
    "unsubscribes": 6,
    "open_rate": 0.4,
    "human_open_rate": 0.2917,
    "click_rate": 0.1,
    "human_click_rate": 0.08,
    "unsubscribe_rate": 0.005,
}
FEEDBACK_EXAMPLE: dict[str, Any] = {
    "sent": 1200,
    "hard_bounces": 18,
    "soft_bounces": 7,
    "complaints": 1,
    "replies": 4,
    "hard_bounce_rate": 0.015,
    "soft_bounce_rate": 0.0058,
    "complaint_rate": 0.0008,
    "reply_rate": 0.0033,
}
ACCOUNT_ENGAGEMENT_EXAMPLE: dict[str, Any] = {
    "account_id": "c7e1a9d3-5f2b-4c8e-b6a4-9d3f1e7c5a20",
    "name": "smtp-eu-1",
    "engagement": ENGAGEMENT_EXAMPLE,
}
CAMPAIGN_ENGAGEMENT_EXAMPLE: dict[str, Any] = {
    "campaign_id": "0b6c2f4e-8d1a-4e57-9c3b-5a7d2e9f1c48",
    "name": "March newsletter",
    "status": "completed",
    "engagement": ENGAGEMENT_EXAMPLE,
}


class Engagement(BaseModel):
    """Opens, clicks and unsubscribes of sent messages.

    Hits flagged as machine-made (mail-privacy proxies that fetch every image, link scanners)
    count in the totals but not in the human figures. Rates are unique counts over ``sent``,
    rounded to 4 decimals, and 0 when nothing was sent.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [ENGAGEMENT_EXAMPLE]})

    sent: int = Field(description="Messages sent.")
    opens: int = Field(description="Open events, repeats and machine opens included.")
    unique_opens: int = Field(description="Messages opened at least once.")
    human_opens: int = Field(description="Open events not flagged as machine-made.")
    unique_human_opens: int = Field(description="Messages opened at least once by a human.")
    clicks: int = Field(description="Click events, repeats and machine clicks included.")
    unique_clicks: int = Field(description="Messages with at least one click.")
    human_clicks: int = Field(description="Click events not flagged as machine-made.")
    unique_human_clicks: int = Field(description="Messages with at least one human click.")
    unsubscribes: int = Field(description="Messages whose recipient unsubscribed.")
    open_rate: float = Field(description="unique_opens / sent")
    human_open_rate: float = Field(description="unique_human_opens / sent")
    click_rate: float = Field(description="unique_clicks / sent")
    human_click_rate: float = Field(description="unique_human_clicks / sent")
    unsubscribe_rate: float = Field(description="unsubscribes / sent")

    @classmethod
    def from_counts(cls, row: Mapping[str, Any]) -> "Engagement":
        """The counters found in `row` (a missing or NULL one is 0) and the rates from them."""
        return cls.model_validate(_counts_and_rates(cls, row, _ENGAGEMENT_RATES))


def _counts_and_rates(
    model: type[BaseModel], row: Mapping[str, Any], rate_of: Mapping[str, str]
) -> dict[str, Any]:
    """The model's counters from `row` (missing or NULL: 0) and the rates over "sent".

    `rate_of` names the counter of each rate; every other field of the model is a counter.
    """
    names = [name for name in model.model_fields if name not in rate_of]
    counts = {name: int(row.get(name) or 0) for name in names}
    sent = counts["sent"]
    rates = {rate: round(counts[name] / sent, 4) if sent else 0.0 for rate, name in rate_of.items()}
    return {**counts, **rates}


_ENGAGEMENT_RATES = {
    "open_rate": "unique_opens",
    "human_open_rate": "unique_human_opens",
    "click_rate": "unique_clicks",
    "human_click_rate": "unique_human_clicks",
    "unsubscribe_rate": "unsubscribes",
}


class Feedback(BaseModel):
    """What came back for sent messages, as the bouncer read it from the accounts' mailboxes.

    A bounced or complained-about message stays ``sent``: the receiving server had accepted
    it. Rates are over ``sent``, rounded to 4 decimals, and 0 when nothing was sent.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [FEEDBACK_EXAMPLE]})

    sent: int = Field(description="Messages sent.")
    hard_bounces: int = Field(description="Sent messages that bounced for good.")
    soft_bounces: int = Field(description="Sent messages that bounced for now (mailbox full...).")
    complaints: int = Field(description="Sent messages their recipient reported as spam.")
    replies: int = Field(description="Sent messages a person replied to.")
    hard_bounce_rate: float = Field(description="hard_bounces / sent")
    soft_bounce_rate: float = Field(description="soft_bounces / sent")
    complaint_rate: float = Field(description="complaints / sent")
    reply_rate: float = Field(description="replies / sent")

    @classmethod
    def from_counts(cls, row: Mapping[str, Any]) -> "Feedback":
        """The counters found in `row` (a missing or NULL one is 0) and the rates from them."""
        return cls.model_validate(feedback_figures(row))


_FEEDBACK_RATES = {
    "hard_bounce_rate": "hard_bounces",
    "soft_bounce_rate": "soft_bounces",
    "complaint_rate": "complaints",
    "reply_rate": "replies",
}


def feedback_figures(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of Feedback from the counters in `row`."""
    return _counts_and_rates(Feedback, row, _FEEDBACK_RATES)


MAILBOX_REPORT_DAYS = 7

_MAILBOX_EXAMPLE: dict[str, Any] = {
    "folder": "INBOX",
    "uidvalidity": 1712345678,
    "last_uid": 4821,
    "polled_at": "2025-03-14T09:29:30Z",
    "last_error": None,
    "reports": {"bounce": 12, "complaint": 1, "reply": 3, "auto-reply": 5},
}


class AccountMailbox(BaseModel):
    """How far the bouncer has read the account's mailbox, and what it found there lately.

    The position fields are null until the mailbox is first read (and again after its host,
    username or folder change).
    """

    model_config = ConfigDict(json_schema_extra={"examples": [_MAILBOX_EXAMPLE]})

    folder: str | None = Field(description="The folder read.")
    uidvalidity: int | None = Field(description="The folder's UIDVALIDITY when last read.")
    last_uid: int | None = Field(description="The highest UID processed.")
    polled_at: datetime | None = Field(description="When the mailbox was last read.")
    last_error: str | None = Field(description="Why the last read failed; null: it worked.")
    history_id: str | None = Field(
        default=None,
        description="Gmail-API accounts: the mailbox's history id read up to (folder is "
        "INBOX, no UIDs); null: the next read is a full one.",
    )
    backoff_until: datetime | None = Field(
        default=None,
        description="Gmail-API accounts: Gmail asked to slow down; not read before then.",
    )
    reports: dict[InboundKind, int] = Field(
        description=f"Messages read in the last {MAILBOX_REPORT_DAYS} days, by kind."
    )


class AccountHealth(Feedback):
    """An account's feedback over its most recent sends since ``rates_since``.

    These are the figures the bouncer judges the account by: it pauses an account whose hard
    bounce or complaint rate over its last sends passes the configured maximum.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "account_id": "c7e1a9d3-5f2b-4c8e-b6a4-9d3f1e7c5a20",
                    "status": "active",
                    "status_reason": None,
                    "rates_since": "2025-03-01T08:00:00Z",
                    "window": 1000,
                    **FEEDBACK_EXAMPLE,
                    "mailbox": _MAILBOX_EXAMPLE,
                }
            ]
        }
    )

    account_id: UUID
    status: AccountStatus
    status_reason: str | None
    rates_since: datetime | None = Field(description="Only sends after this count (null: all).")
    window: int = Field(description="At most this many of the newest sends are counted.")
    mailbox: AccountMailbox | None = Field(
        description="The bouncer's reading of the account's mailbox; null: it has no IMAP "
        "settings and is not a Gmail-API account."
    )


class AccountEngagement(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [ACCOUNT_ENGAGEMENT_EXAMPLE]})

    account_id: UUID
    name: str
    engagement: Engagement


class CampaignEngagement(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [CAMPAIGN_ENGAGEMENT_EXAMPLE]})

    campaign_id: UUID
    name: str
    status: CampaignStatus
    engagement: Engagement
