"""SQL of opens, clicks and unsubscribes per campaign and account."""

from uuid import UUID

import asyncpg
from mailfleet_common.db import Conn

from mailfleet_api import schemas

# The statements below splice in these two constants (never input, hence the noqa S608).
# Each first names the campaigns it covers in a CTE `scope (id)`. Per campaign, one row per
# message sent and one per tracking event: the shape _ENGAGEMENT_COUNTS reads.
_ENGAGEMENT_ROWS = """
    engagement_rows AS (
        SELECT campaign_id, account_id, 'sent' AS type, id AS message_id, false AS machine
        FROM messages
        WHERE status = 'sent' AND campaign_id IN (SELECT id FROM scope)
        UNION ALL
        SELECT campaign_id, account_id, type, message_id,
               coalesce((data->>'machine')::boolean, false)
        FROM events
        WHERE type IN ('opened', 'clicked', 'unsubscribed')
          AND campaign_id IN (SELECT id FROM scope)
    )
"""
# The counters of schemas.Engagement, over a group of engagement_rows.
_ENGAGEMENT_COUNTS = """
    count(*) FILTER (WHERE type = 'sent') AS sent,
    count(*) FILTER (WHERE type = 'opened') AS opens,
    count(DISTINCT message_id) FILTER (WHERE type = 'opened') AS unique_opens,
    count(*) FILTER (WHERE type = 'opened' AND NOT machine) AS human_opens,
    count(DISTINCT message_id) FILTER (WHERE type = 'opened' AND NOT machine)
        AS unique_human_opens,
    count(*) FILTER (WHERE type = 'clicked') AS clicks,
    count(DISTINCT message_id) FILTER (WHERE type = 'clicked') AS unique_clicks,
    count(*) FILTER (WHERE type = 'clicked' AND NOT machine) AS human_clicks,
    count(DISTINCT message_id) FILTER (WHERE type = 'clicked' AND NOT machine)
        AS unique_human_clicks,
    count(DISTINCT message_id) FILTER (WHERE type = 'unsubscribed') AS unsubscribes
"""


def _account_engagement(row: asyncpg.Record) -> schemas.AccountEngagement:
    return schemas.AccountEngagement(
        account_id=row["account_id"],
        name=row["name"],
        engagement=schemas.Engagement.from_counts(dict(row)),
    )


async def campaign_engagement(
    conn: Conn, campaign_id: UUID
) -> tuple[schemas.Engagement, list[schemas.AccountEngagement]]:
    """A campaign's engagement, overall and for each account that sent its messages."""
    rows = await conn.fetch(
        "WITH scope (id) AS (SELECT $1::uuid), "  # noqa: S608 - spliced constants only
        + _ENGAGEMENT_ROWS
        + """
        SELECT grouping(e.account_id) = 1 AS overall, e.account_id, a.name,
        """
        + _ENGAGEMENT_COUNTS
        + """
        FROM engagement_rows e LEFT JOIN accounts a ON a.id = e.account_id
        GROUP BY GROUPING SETS ((), (e.account_id, a.name))
        ORDER BY overall DESC, a.name, e.account_id
        """,
        campaign_id,
    )
    # Grouping by nothing yields one row even when there is nothing to count.
    overall, *by_account = rows
    return schemas.Engagement.from_counts(dict(overall)), [
        _account_engagement(r) for r in by_account if r["account_id"] is not None
    ]


async def recent_engagement(
    conn: Conn, limit: int
) -> tuple[list[schemas.AccountEngagement], list[schemas.CampaignEngagement]]:
    """Engagement of the `limit` newest campaigns that sent anything: by account, by campaign.

    Both lists cover the same campaigns, so what the accounts sent adds up to what the
    campaigns sent, and the cost stays bounded however long the history.
    """
    rows = await conn.fetch(
        "WITH scope (id) AS ("  # noqa: S608 - spliced constants only
        + """
            SELECT c.id FROM campaigns c
            WHERE EXISTS (SELECT 1 FROM messages m
                          WHERE m.campaign_id = c.id AND m.status = 'sent')
            ORDER BY c.created_at DESC, c.id DESC
            LIMIT $1
        ),
        """
        + _ENGAGEMENT_ROWS
        + """
        SELECT grouping(e.campaign_id) = 0 AS by_campaign, e.campaign_id, c.name AS campaign,
               c.status, e.account_id, a.name,
        """
        + _ENGAGEMENT_COUNTS
        + """
        FROM engagement_rows e
        JOIN campaigns c ON c.id = e.campaign_id
        LEFT JOIN accounts a ON a.id = e.account_id
        GROUP BY GROUPING SETS ((e.campaign_id, c.name, c.status, c.created_at),
                                (e.account_id, a.name))
        ORDER BY by_campaign, a.name, e.account_id, c.created_at DESC, e.campaign_id DESC
        """,
        limit,
    )
    by_account = [
        _account_engagement(r) for r in rows if not r["by_campaign"] and r["account_id"] is not None
    ]
    by_campaign = [
        schemas.CampaignEngagement(
            campaign_id=r["campaign_id"],
            name=r["campaign"],
            status=r["status"],
            engagement=schemas.Engagement.from_counts(dict(r)),
        )
        for r in rows
        if r["by_campaign"]
    ]
    return by_account, by_campaign
