"""SQL of campaigns: creation, settings, lifecycle and feedback counts."""

from datetime import datetime
from typing import get_args
from uuid import UUID

from mailfleet_common.db import Conn

from mailfleet_api import schemas
from mailfleet_api.queries import counters
from mailfleet_api.queries.pages import newest_first


async def insert_campaign(conn: Conn, owner_id: UUID, body: schemas.CampaignCreate) -> UUID:
    campaign_id: UUID = await conn.fetchval(
        """
        INSERT INTO campaigns (owner_id, name, subject, html_body, text_body, account_ids,
                               start_at, tracking, unsubscribe_scope, pool_tags)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        RETURNING id
        """,
        owner_id,
        body.name,
        body.subject,
        body.html_body,
        body.text_body,
        list(dict.fromkeys(body.account_ids)),
        body.start_at,
        body.tracking,
        body.unsubscribe_scope,
        body.pools,
    )
    return campaign_id


async def fetch_campaign(conn: Conn, campaign_id: UUID) -> schemas.Campaign | None:
    """A campaign with the number of its messages in each status."""
    row = await conn.fetchrow(
        """
        SELECT c.id, c.owner_id, c.name, c.subject, c.account_ids, c.pool_tags AS pools,
               c.status, c.start_at, c.tracking, c.unsubscribe_scope, c.created_at,
               c.updated_at, c.completed_at, c.html_body, c.text_body,
               p.pool_accounts, p.remaining_today,
               cardinality(c.account_ids) = 0 AND cardinality(c.pool_tags) = 0 AS every_account
        FROM campaigns c
        CROSS JOIN LATERAL (
            SELECT coalesce(jsonb_object_agg(status, n), '{}') AS pool_accounts,
                   coalesce(sum(left_today) FILTER (WHERE status = 'active'), 0)
                       AS remaining_today
            FROM (SELECT a.status, count(*) AS n,
                         sum(greatest(account_effective_limit(a, d.day)
                                      - coalesce(u.reserved, 0), 0)) AS left_today
                  FROM accounts a
                  CROSS JOIN (SELECT (now() AT TIME ZONE 'utc')::date AS day) d
                  LEFT JOIN account_daily_usage u ON u.account_id = a.id AND u.day = d.day
                  -- The dispatcher's rule: named accounts, tagged ones, or every one.
                  WHERE a.id = ANY(c.account_ids) OR a.tags && c.pool_tags
                     OR (cardinality(c.account_ids) = 0 AND cardinality(c.pool_tags) = 0)
                  GROUP BY a.status) s
        ) p
        WHERE c.id = $1
        """,
        campaign_id,
    )
    if row is None:
        return None
    values = dict(row)
    values["messages"] = await counters.campaign_status_counts(conn, campaign_id)
    values["total_messages"] = sum(values["messages"].values())
    members = values.pop("pool_accounts")
    values["pool"] = {
        "every_account": values.pop("every_account"),
        "accounts": {s: members.get(s, 0) for s in get_args(schemas.AccountStatus)},
        "remaining_today": values.pop("remaining_today"),
    }
    return schemas.Campaign.model_validate(values)


async def list_campaigns(
    conn: Conn, limit: int, after: tuple[datetime, UUID] | None, status: str | None
) -> tuple[list[schemas.CampaignSummary], bool]:
    """A page of campaigns, newest first, after the given (created_at, id)."""
    select = """
        SELECT id, owner_id, name, subject, account_ids, pool_tags AS pools, status, start_at,
               tracking, unsubscribe_scope, created_at, updated_at, completed_at
        FROM campaigns
    """
    where = "$1::text IS NULL OR status = $1"
    rows, more = await newest_first(conn, select, "created_at", where, [status], limit, after)
    return [schemas.CampaignSummary.model_validate(dict(r)) for r in rows], more


async def update_campaign_settings(
    conn: Conn, campaign_id: UUID, body: schemas.CampaignUpdate
) -> bool:
    """Set the tracking flag and unsubscribe scope where given.

    The tracking flag changes only on a draft: senders keep a running campaign's templates and
    flag for as long as it runs. False if no campaign was updated (none, or not a draft).
    """
    found = await conn.fetchval(
        """
        UPDATE campaigns
        SET tracking = coalesce($2, tracking),
            unsubscribe_scope = coalesce($3, unsubscribe_scope),
            account_ids = coalesce($4, account_ids),
            pool_tags = coalesce($5, pool_tags),
            updated_at = now()
        WHERE id = $1 AND ($2::boolean IS NULL OR status = 'draft')
        RETURNING true
        """,
        campaign_id,
        body.tracking,
        body.unsubscribe_scope,
        None if body.account_ids is None else list(dict.fromkeys(body.account_ids)),
        body.pools,
    )
    return bool(found)


async def pool_lacks_active_account(conn: Conn, campaign_id: UUID) -> bool:
    """True if the campaign names accounts or tags and none of them is an active account."""
    lacks: bool = await conn.fetchval(
        """
        SELECT (cardinality(c.account_ids) > 0 OR cardinality(c.pool_tags) > 0)
               AND NOT EXISTS (SELECT 1 FROM accounts a
                               WHERE a.status = 'active'
                                 AND (a.id = ANY(c.account_ids) OR a.tags && c.pool_tags))
        FROM campaigns c WHERE c.id = $1
        """,
        campaign_id,
    )
    return bool(lacks)


async def fetch_campaign_status(conn: Conn, campaign_id: UUID) -> str | None:
    status: str | None = await conn.fetchval(
        "SELECT status FROM campaigns WHERE id = $1", campaign_id
    )
    return status


async def start_campaign(conn: Conn, campaign_id: UUID, start_at: datetime | None) -> bool:
    """draft/paused -> running, keeping the stored start_at unless one is given."""
    found = await conn.fetchval(
        """
        UPDATE campaigns
        SET status = 'running', start_at = coalesce($2, start_at), updated_at = now()
        WHERE id = $1 AND status IN ('draft', 'paused')
        RETURNING true
        """,
        campaign_id,
        start_at,
    )
    return bool(found)


async def pause_campaign(conn: Conn, campaign_id: UUID) -> bool:
    """Pause a running campaign."""
    found = await conn.fetchval(
        """
        UPDATE campaigns SET status = 'paused', updated_at = now()
        WHERE id = $1 AND status = 'running'
        RETURNING true
        """,
        campaign_id,
    )
    return bool(found)


async def cancel_campaign(conn: Conn, campaign_id: UUID) -> tuple[int, int] | None:
    """Cancel a draft/running/paused campaign and its unsent messages, in one statement.

    Returns (messages cancelled, reservations released), or None if the campaign is in no
    cancellable status. The messages are locked first (FOR UPDATE re-reads a row a sender
    changed meanwhile), so a message a sender has just claimed (`sending`) is left alone and
    only the messages that really were `assigned` give their unit back, to the UTC day they
    were assigned on.
    """
    row = await conn.fetchrow(
        """
        WITH campaign AS (
            UPDATE campaigns SET status = 'cancelled', updated_at = now()
            WHERE id = $1 AND status IN ('draft', 'running', 'paused')
            RETURNING id
        ), unsent AS (
            SELECT m.id, m.status, m.account_id, m.assigned_at
            FROM messages m JOIN campaign c ON c.id = m.campaign_id
            WHERE m.status IN ('queued', 'assigned', 'deferred')
            FOR UPDATE OF m
        ), cancelled AS (
            -- account_id is cleared because the unit is given back right here: the
            -- dispatcher's sweep gives back units only of cancelled messages that still
            -- carry an account.
            UPDATE messages m
            SET status = 'cancelled', account_id = NULL, next_attempt_at = NULL,
                updated_at = now()
            FROM unsent
            WHERE m.id = unsent.id
            RETURNING unsent.status AS was, unsent.account_id, unsent.assigned_at
        ), usage AS (
            SELECT release_reservations(
                array_agg(account_id), array_agg((assigned_at AT TIME ZONE 'utc')::date),
                array_agg(1)
            ) AS n
            FROM cancelled
            WHERE was = 'assigned' AND account_id IS NOT NULL AND assigned_at IS NOT NULL
        )
        SELECT (SELECT count(*) FROM campaign) AS campaigns,
               (SELECT count(*) FROM cancelled) AS messages,
               (SELECT coalesce(sum(n), 0) FROM usage) AS released
        """,
        campaign_id,
    )
    assert row is not None  # noqa: S101 - an aggregate always returns a row
    if not row["campaigns"]:
        return None
    return row["messages"], int(row["released"])


async def lock_campaign_status(conn: Conn, campaign_id: UUID) -> str | None:
    """The campaign's status, row-locked against a concurrent cancel until commit."""
    status: str | None = await conn.fetchval(
        "SELECT status FROM campaigns WHERE id = $1 FOR NO KEY UPDATE", campaign_id
    )
    return status


async def reopen_campaign(conn: Conn, campaign_id: UUID) -> None:
    """Run a completed campaign again: new recipients arrived."""
    await conn.execute(
        """
        UPDATE campaigns SET status = 'running', completed_at = NULL, updated_at = now()
        WHERE id = $1 AND status = 'completed'
        """,
        campaign_id,
    )


async def count_queued(conn: Conn, campaign_id: UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM messages WHERE campaign_id = $1 AND status = 'queued'", campaign_id
    )
    return count


async def campaign_feedback(conn: Conn, campaign_id: UUID) -> schemas.Feedback:
    """Bounces, complaints and replies of the campaign's sent messages, from the counters."""
    totals = await counters.campaign_totals(conn, campaign_id)
    overall = totals.get(counters.EVERY)
    if overall is None:
        return schemas.Feedback.from_counts({})
    return schemas.Feedback.from_counts(counters.feedback_counts(overall))
