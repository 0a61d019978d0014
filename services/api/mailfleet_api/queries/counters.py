"""SQL over the counters (migration 0018): buckets plus the deltas not yet folded.

Every read here is one statement, so it sees the deltas and the buckets in one snapshot: a
fold moves deltas into buckets in one transaction, and a read counts each change once
whether it has been folded or not.
"""

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from mailfleet_common.db import Conn

EVERY = UUID(int=0)  # the key of "every campaign" or "every account" in counter_buckets

EVENT_COUNTERS = (
    "sent", "failed", "deferred", "bounces", "hard_bounces", "complaints", "replies",
    "unsubscribes", "opens", "unique_opens", "human_opens", "unique_human_opens", "clicks",
    "unique_clicks", "human_clicks", "unique_human_clicks",
)  # fmt: skip
MESSAGE_STATUSES = (
    "queued", "assigned", "sending", "sent", "deferred", "failed", "uncertain", "cancelled",
)  # fmt: skip
MESSAGE_COUNTERS = (
    *(f"messages_{s}" for s in MESSAGE_STATUSES),
    "messages_hard_bounced", "messages_soft_bounced", "messages_complained", "messages_replied",
)  # fmt: skip
COUNTERS = (*EVENT_COUNTERS, *MESSAGE_COUNTERS)

_COLUMNS = ", ".join(COUNTERS)
_SUMS = ", ".join(f"coalesce(sum({c}), 0)::bigint AS {c}" for c in COUNTERS)
MESSAGE_STATUS_COLUMNS = ", ".join(f"messages_{s}" for s in MESSAGE_STATUSES)
MESSAGE_STATUS_SUMS = ", ".join(
    f"coalesce(sum(messages_{s}), 0)::bigint AS messages_{s}" for s in MESSAGE_STATUSES
)
_EVENT_SUMS = ", ".join(f"coalesce(sum({c}), 0)::bigint AS {c}" for c in EVENT_COUNTERS)


def engagement_counts(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """The counters of schemas.Engagement from a row of counters (sent: messages now sent)."""
    values = dict(row)
    return {**values, "sent": values["messages_sent"]}


def feedback_counts(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """The counters of schemas.Feedback from a row of counters."""
    return {
        "sent": row["messages_sent"],
        "hard_bounces": row["messages_hard_bounced"],
        "soft_bounces": row["messages_soft_bounced"],
        "complaints": row["messages_complained"],
        "replies": row["messages_replied"],
    }


def messages_by_status(row: asyncpg.Record | dict[str, Any]) -> dict[str, int]:
    """Messages in each status, only the statuses some message is in."""
    counts = {s: int(row[f"messages_{s}"]) for s in MESSAGE_STATUSES}
    return {s: n for s, n in counts.items() if n}


# All-time counters of one campaign: its overall row (account EVERY) and one per account.
_CAMPAIGN_TOTALS = f"""
    SELECT account_id, {_SUMS} FROM (
        SELECT account_id, {_COLUMNS} FROM counter_buckets
        WHERE campaign_id = $1 AND bucket = '-infinity'
        UNION ALL
        SELECT k.account_id, {_COLUMNS} FROM counter_deltas d
        CROSS JOIN LATERAL (VALUES (d.account_id), ('{EVERY}'::uuid)) AS k (account_id)
        WHERE d.campaign_id = $1 AND k.account_id IS NOT NULL
    ) t
    GROUP BY account_id
"""  # noqa: S608 - constants only


async def campaign_totals(conn: Conn, campaign_id: UUID) -> dict[UUID, asyncpg.Record]:
    """A campaign's all-time counters by account; EVERY: the campaign's own."""
    rows = await conn.fetch(_CAMPAIGN_TOTALS, campaign_id)
    return {r["account_id"]: r for r in rows}


async def campaign_status_counts(conn: Conn, campaign_id: UUID) -> dict[str, int]:
    """The campaign's messages in each status (only statuses some message is in)."""
    row = await conn.fetchrow(
        f"""
        SELECT {_SUMS} FROM (
            SELECT {_COLUMNS} FROM counter_buckets
            WHERE campaign_id = $1 AND account_id = '{EVERY}' AND bucket = '-infinity'
            UNION ALL
            SELECT {_COLUMNS} FROM counter_deltas
            WHERE campaign_id = $1 AND bucket = '-infinity'
        ) t
        """,  # noqa: S608 - constants only
        campaign_id,
    )
    assert row is not None  # noqa: S101 - an aggregate always returns a row
    return messages_by_status(row)


async def fleet_totals(conn: Conn) -> asyncpg.Record:
    """Every campaign's and account's all-time counters together."""
    row = await conn.fetchrow(
        f"""
        SELECT {_SUMS} FROM (
            SELECT {_COLUMNS} FROM counter_buckets
            WHERE campaign_id = '{EVERY}' AND account_id = '{EVERY}' AND bucket = '-infinity'
            UNION ALL
            SELECT {_COLUMNS} FROM counter_deltas
        ) t
        """  # noqa: S608 - constants only
    )
    assert row is not None  # noqa: S101 - an aggregate always returns a row
    return row


async def recent_totals(conn: Conn, limit: int) -> list[asyncpg.Record]:
    """All-time counters of the `limit` newest campaigns that sent anything, newest first.

    One row per campaign, with its `campaign` name, status and created_at.
    """
    return await conn.fetch(
        f"""
        -- The unfolded deltas are read once: scanned per campaign, their churned table
        -- (appended to and emptied every few seconds) cost a millisecond a campaign.
        WITH pending AS MATERIALIZED (
            SELECT campaign_id, sum(messages_sent) AS messages_sent FROM counter_deltas
            GROUP BY campaign_id
        ), scope AS (
            SELECT c.id, c.name, c.status, c.created_at FROM campaigns c
            WHERE coalesce((SELECT b.messages_sent FROM counter_buckets b
                            WHERE b.campaign_id = c.id AND b.account_id = '{EVERY}'
                              AND b.bucket = '-infinity'), 0)
                  + coalesce((SELECT p.messages_sent FROM pending p
                              WHERE p.campaign_id = c.id), 0) > 0
            ORDER BY c.created_at DESC, c.id DESC
            LIMIT $1
        ), per_campaign AS (
            SELECT campaign_id, {_COLUMNS} FROM counter_buckets
            WHERE bucket = '-infinity' AND account_id = '{EVERY}'
              AND campaign_id IN (SELECT id FROM scope)
            UNION ALL
            SELECT campaign_id, {_COLUMNS} FROM counter_deltas
            WHERE campaign_id IN (SELECT id FROM scope)
        )
        SELECT s.id AS campaign_id, s.name AS campaign, s.status, s.created_at, {_SUMS}
        FROM per_campaign p JOIN scope s ON s.id = p.campaign_id
        GROUP BY s.id, s.name, s.status, s.created_at
        ORDER BY s.created_at DESC, s.id DESC
        """,  # noqa: S608 - constants only
        limit,
    )


async def timeline(
    conn: Conn,
    campaign_id: UUID,
    account_id: UUID,
    start: datetime,
    end: datetime,
    unit: str,
) -> list[asyncpg.Record]:
    """Event counters per `unit` (hour or day, UTC) from `start` to `end` (exclusive).

    Of one campaign, one account, or (both EVERY) of all; only the units that have rows.
    """
    return await conn.fetch(
        f"""
        SELECT date_trunc($5, bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS start,
               {_EVENT_SUMS}
        FROM (
            SELECT bucket, {_COLUMNS} FROM counter_buckets
            WHERE campaign_id = $1 AND account_id = $2 AND bucket >= $3 AND bucket < $4
            UNION ALL
            SELECT bucket, {_COLUMNS} FROM counter_deltas
            WHERE ($1 = '{EVERY}' OR campaign_id = $1) AND ($2 = '{EVERY}' OR account_id = $2)
              AND bucket >= $3 AND bucket < $4
        ) t
        GROUP BY 1 ORDER BY 1
        """,  # noqa: S608 - constants only
        campaign_id,
        account_id,
        start,
        end,
        unit,
    )
