"""SQL of queued messages: enqueue, counts by status, clearing."""

from collections.abc import Sequence
from uuid import UUID

from mailfleet_common.db import Conn

from mailfleet_api import schemas
from mailfleet_api.queries import counters


async def suppressed_among(conn: Conn, campaign_id: UUID, emails: Sequence[str]) -> set[str]:
    """The given addresses suppressed (globally or for this campaign) and not expired."""
    rows = await conn.fetch(
        """
        SELECT e.email FROM unnest($2::text[]) AS e (email)
        WHERE EXISTS (
            SELECT 1 FROM suppressions s
            WHERE lower(s.email) = lower(e.email)
              AND (s.campaign_id IS NULL OR s.campaign_id = $1)
              AND (s.expires_at IS NULL OR s.expires_at > now())
        )
        """,
        campaign_id,
        list(emails),
    )
    return {r["email"] for r in rows}


async def insert_messages(
    conn: Conn,
    campaign_id: UUID,
    emails: Sequence[str],
    names: Sequence[str | None],
    variables_json: Sequence[str],
    traceparent: str | None = None,
) -> set[str]:
    """Queue messages in the given order; returns the addresses that were not there yet.

    ``traceparent``: the enqueue's trace context, kept so that the dispatcher and sender
    continue its trace (None when tracing is off or the trace is not sampled).

    A `queued` event per message is written only while some enabled webhook endpoint wants
    message.queued: the message row already says when it was queued, and an event per
    recipient would make a large enqueue about half as slow again.
    """
    rows = await conn.fetch(
        """
        WITH inserted AS (
            INSERT INTO messages (campaign_id, email, name, variables, traceparent)
            SELECT $1, r.email, r.name, r.variables::jsonb, $5
            FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY
                 AS r (email, name, variables, position)
            ORDER BY r.position
            ON CONFLICT (campaign_id, lower(email)) WHERE NOT transactional DO NOTHING
            RETURNING id, email, created_at
        ), logged AS (
            INSERT INTO events (occurred_at, type, campaign_id, message_id)
            SELECT created_at, 'queued', $1, id FROM inserted
            WHERE EXISTS (
                SELECT 1 FROM webhook_endpoints
                WHERE enabled AND 'message.queued' = ANY (event_types))
        )
        SELECT email FROM inserted
        """,
        campaign_id,
        list(emails),
        list(names),
        list(variables_json),
        traceparent,
    )
    return {r["email"] for r in rows}


async def count_messages_by_status(conn: Conn) -> dict[str, int]:
    """Messages in each status (only statuses some message is in), from the counters."""
    return counters.messages_by_status(await counters.fleet_totals(conn))


async def count_account_messages_by_status(conn: Conn) -> list[schemas.AccountQueue]:
    """Per account, its messages in each status (messages not tied to an account left out).

    From the counters (one row per account, plus the unfolded deltas), not from `messages`:
    grouping the messages themselves took seconds at 10M.
    """
    rows = await conn.fetch(
        f"""
        SELECT a.id AS account_id, a.name, {counters.MESSAGE_STATUS_SUMS}
        FROM (
            SELECT account_id, {counters.MESSAGE_STATUS_COLUMNS} FROM counter_buckets
            WHERE campaign_id = '{counters.EVERY}' AND account_id <> '{counters.EVERY}'
              AND bucket = '-infinity'
            UNION ALL
            SELECT account_id, {counters.MESSAGE_STATUS_COLUMNS} FROM counter_deltas
            WHERE account_id IS NOT NULL AND bucket = '-infinity'
        ) c
        JOIN accounts a ON a.id = c.account_id
        GROUP BY a.id, a.name ORDER BY a.name, a.id
        """  # noqa: S608 - constants only
    )
    queues = [
        schemas.AccountQueue(
            account_id=r["account_id"], name=r["name"], by_status=counters.messages_by_status(r)
        )
        for r in rows
    ]
    return [q for q in queues if q.by_status]


async def delete_failed_messages(conn: Conn, campaign_id: UUID | None) -> int:
    removed = await conn.fetchval(
        """
        WITH gone AS (
            DELETE FROM messages
            WHERE status = 'failed' AND ($1::uuid IS NULL OR campaign_id = $1)
            RETURNING 1
        )
        SELECT count(*) FROM gone
        """,
        campaign_id,
    )
    return int(removed)
