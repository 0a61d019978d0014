"""SQL of opens, clicks and unsubscribes per campaign and account."""

from uuid import UUID

import asyncpg
from mailfleet_common.db import Conn

from mailfleet_api import schemas
from mailfleet_api.queries import counters


def _account_engagement(
    account_id: UUID, name: str | None, row: asyncpg.Record
) -> schemas.AccountEngagement:
    return schemas.AccountEngagement(
        account_id=account_id,
        name=name,
        engagement=schemas.Engagement.from_counts(counters.engagement_counts(row)),
    )


async def campaign_engagement(
    conn: Conn, campaign_id: UUID
) -> tuple[schemas.Engagement, list[schemas.AccountEngagement]]:
    """A campaign's engagement, overall and for each account that sent its messages."""
    engagement, by_account, _ = await campaign_figures(conn, campaign_id)
    return engagement, by_account


async def campaign_figures(
    conn: Conn, campaign_id: UUID
) -> tuple[schemas.Engagement, list[schemas.AccountEngagement], schemas.Feedback]:
    """A campaign's engagement (overall, by account) and feedback, from one read of counters."""
    totals = await counters.campaign_totals(conn, campaign_id)
    overall = totals.pop(counters.EVERY, None)
    names = await _account_names(conn, list(totals))
    by_account = [
        _account_engagement(account_id, names.get(account_id), row)
        for account_id, row in totals.items()
        if _engaged(row)
    ]
    by_account.sort(key=lambda e: (e.name is None, e.name or "", str(e.account_id)))
    if overall is None:
        return schemas.Engagement.from_counts({}), by_account, schemas.Feedback.from_counts({})
    return (
        schemas.Engagement.from_counts(counters.engagement_counts(overall)),
        by_account,
        schemas.Feedback.from_counts(counters.feedback_counts(overall)),
    )


def _engaged(row: asyncpg.Record) -> bool:
    """Whether an account counts in a breakdown: it sent, or its messages were engaged with."""
    return any(row[c] for c in ("messages_sent", "opens", "clicks", "unsubscribes"))


async def _account_names(conn: Conn, account_ids: list[UUID]) -> dict[UUID, str]:
    rows = await conn.fetch("SELECT id, name FROM accounts WHERE id = ANY($1::uuid[])", account_ids)
    return {r["id"]: r["name"] for r in rows}


async def recent_engagement(conn: Conn, limit: int) -> list[schemas.CampaignEngagement]:
    """Engagement of the `limit` newest campaigns that sent anything, newest first.

    The cost stays bounded however long the history and however large the fleet.
    """
    return [
        schemas.CampaignEngagement(
            campaign_id=r["campaign_id"],
            name=r["campaign"],
            status=r["status"],
            engagement=schemas.Engagement.from_counts(counters.engagement_counts(r)),
        )
        for r in await counters.recent_totals(conn, limit)
    ]
