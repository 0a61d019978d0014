"""SQL of messages: the filtered list, one message's attempts, returns and tracking hits."""

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from mailfleet_common.db import Conn

from mailfleet_api.exports import Export
from mailfleet_api.queries.pages import keyset_page, param
from mailfleet_api.schemas import messages as schemas

MESSAGE_COLUMNS = (
    "id", "campaign_id", "account_id", "email", "name", "status", "attempts", "message_id",
    "last_code", "last_error", "bounce", "created_at", "updated_at", "next_attempt_at",
    "sent_at", "bounced_at", "complained_at", "replied_at",
)  # fmt: skip
_SELECT = f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages"  # noqa: S608 - constants
TRACKING_SHOWN = 500
FEEDBACK_TYPES = ("bounced", "complained", "replied", "auto-replied", "unsubscribed")


def _lead(filters: schemas.MessageFilter) -> tuple[str, ...]:
    """The columns whose index (leading with them, then created_at, id) a page is read from.

    Without them, the planner may walk messages_created_idx newest first, taking the
    campaign's or account's messages for spread over time: a large campaign of last month
    costs a walk over every newer message (tens of seconds at 10M). A campaign and a status
    together read messages_campaign_status_created_idx, not the campaign's every message.
    """
    if filters.by_sent:
        return ()
    if filters.campaign_id is not None:
        return ("campaign_id", "status") if filters.status is not None else ("campaign_id",)
    for column in ("account_id", "status"):
        if getattr(filters, column) is not None:
            return (column,)
    return ()


def _held(column: str, value: Any, lead: tuple[str, ...], args: list[Any]) -> str:
    # The leading column as a range of one value: an equality would make it a constant the
    # planner drops from the ORDER BY, and any index on created_at would do again.
    if column in lead:
        placeholder = param(args, value)
        return f"{column} >= {placeholder} AND {column} <= {placeholder}"
    return f"{column} = {param(args, value)}"


def _where(
    filters: schemas.MessageFilter | schemas.CampaignResultFilter,
    args: list[Any],
    lead: tuple[str, ...] = (),
) -> str:
    """The condition for the filters given; their values are appended to `args`."""
    clauses: list[str] = []
    if isinstance(filters, schemas.MessageFilter):
        if filters.campaign_id is not None:
            clauses.append(_held("campaign_id", filters.campaign_id, lead, args))
        if filters.account_id is not None:
            clauses.append(_held("account_id", filters.account_id, lead, args))
        if filters.created_after is not None:
            clauses.append(f"created_at >= {param(args, filters.created_after)}")
        if filters.created_before is not None:
            clauses.append(f"created_at < {param(args, filters.created_before)}")
    if filters.status is not None:
        clauses.append(_held("status", filters.status, lead, args))
    if filters.email is not None:
        # messages_email_idx is on lower(email).
        clauses.append(f"lower(email) = lower({param(args, filters.email)})")
    if filters.sent_after is not None:
        clauses.append(f"sent_at >= {param(args, filters.sent_after)}")
    if filters.sent_before is not None:
        clauses.append(f"sent_at < {param(args, filters.sent_before)}")
    return " AND ".join(clauses) or "true"


def _order_column(filters: schemas.MessageFilter) -> str:
    return "sent_at" if filters.by_sent else "created_at"


def message_position(message: schemas.Message, filters: schemas.MessageFilter) -> datetime:
    """The timestamp the list is ordered by, for a message of a page (for its cursor)."""
    at = message.sent_at if filters.by_sent else message.created_at
    assert at is not None  # noqa: S101 - a sent bound selects sent messages only
    return at


async def list_messages(
    conn: Conn,
    filters: schemas.MessageFilter,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[schemas.Message], bool]:
    """A page of matching messages, newest first (by sent time with a sent bound)."""
    args: list[Any] = []
    lead = _lead(filters)
    where = _where(filters, args, lead)
    keys: tuple[str, ...] = (_order_column(filters), "id")
    position: tuple[Any, ...] | None = after
    if lead:
        keys = (*lead, *keys)
        position = None if after is None else (*(getattr(filters, c) for c in lead), *after)
    rows, more = await keyset_page(conn, _SELECT, keys, where, args, limit, position)
    return [schemas.Message.model_validate(dict(r)) for r in rows], more


async def fetch_message(conn: Conn, message_id: int) -> schemas.Message | None:
    row = await conn.fetchrow(f"{_SELECT} WHERE id = $1", message_id)
    return None if row is None else schemas.Message.model_validate(dict(row))


async def fetch_attempts(conn: Conn, message_id: int) -> list[asyncpg.Record]:
    """Every SMTP attempt of a message, first first, with the time since the previous one."""
    return await conn.fetch(
        """
        SELECT a.attempt, a.outcome, a.smtp_code, a.detail, a.attempted_at,
               extract(epoch FROM a.attempted_at - m.created_at)::float8 AS since_enqueued_s,
               extract(epoch FROM a.attempted_at - lag(a.attempted_at) OVER (ORDER BY a.attempt))
                   ::float8 AS since_previous_s
        FROM send_attempts a JOIN messages m ON m.id = a.message_id
        WHERE a.message_id = $1
        ORDER BY a.attempt
        """,
        message_id,
    )


async def fetch_feedback(conn: Conn, message_id: int) -> list[asyncpg.Record]:
    """What the bouncer read about a message: bounces, complaints, replies, oldest first."""
    return await conn.fetch(
        """
        SELECT type, occurred_at, data FROM events
        WHERE message_id = $1 AND type = ANY($2::text[]) AND data ? 'report_id'
        ORDER BY occurred_at, id
        """,
        message_id,
        list(FEEDBACK_TYPES),
    )


async def fetch_tracking(conn: Conn, message_id: int) -> tuple[list[asyncpg.Record], int]:
    """A message's newest tracking hits (at most TRACKING_SHOWN), and how many there are."""
    rows = await conn.fetch(
        """
        -- Materialized: with the LIMIT alone, the planner may walk every open and click
        -- newest first (events_type_idx) looking for this message's.
        WITH hits AS MATERIALIZED (
            SELECT id, type, occurred_at, data FROM events
            WHERE message_id = $1 AND type IN ('opened', 'clicked', 'unsubscribed')
              AND NOT data ? 'report_id'
        )
        SELECT type, occurred_at, data, count(*) OVER () AS total FROM hits
        ORDER BY occurred_at DESC, id DESC
        LIMIT $2
        """,
        message_id,
        TRACKING_SHOWN,
    )
    return rows, int(rows[0]["total"]) if rows else 0


def message_export(filters: schemas.MessageFilter) -> Export:
    """The matching messages, in the list's order."""
    args: list[Any] = []
    lead = _lead(filters)
    where = _where(filters, args, lead)
    keys = [*lead, _order_column(filters), "id"]
    return Export(
        f"{_SELECT} WHERE {where} ORDER BY {' DESC, '.join(keys)} DESC",
        args,
        MESSAGE_COLUMNS,
    )


CAMPAIGN_RESULT_COLUMNS = (
    "id", "email", "name", "status", "account_id", "attempts", "last_code", "last_error",
    "message_id", "created_at", "sent_at", "opened", "clicked", "unsubscribed", "bounced",
    "bounce", "complained", "replied",
)  # fmt: skip


def campaign_export(campaign_id: UUID, filters: schemas.CampaignResultFilter) -> Export:
    """One row per message of a campaign, oldest first, with what became of it.

    `opened` and `clicked` count people only (not privacy proxies or link scanners). The
    campaign's tracking events are grouped once (events_campaign_idx), not looked up per row.
    """
    args: list[Any] = [campaign_id]
    where = _where(filters, args)
    return Export(
        f"""
        SELECT m.id, m.email, m.name, m.status, m.account_id, m.attempts, m.last_code,
               m.last_error, m.message_id, m.created_at, m.sent_at,
               coalesce(t.opened, false) AS opened, coalesce(t.clicked, false) AS clicked,
               coalesce(t.unsubscribed, false) AS unsubscribed,
               m.bounce IS NOT NULL AS bounced, m.bounce,
               m.complained_at IS NOT NULL AS complained, m.replied_at IS NOT NULL AS replied
        FROM (SELECT * FROM messages WHERE campaign_id = $1 AND {where}) m
        LEFT JOIN (
            SELECT message_id,
                   bool_or(type = 'opened' AND human) AS opened,
                   bool_or(type = 'clicked' AND human) AS clicked,
                   bool_or(type = 'unsubscribed') AS unsubscribed
            FROM (SELECT message_id, type,
                         coalesce((data ->> 'machine')::boolean, false) = false AS human
                  FROM events
                  WHERE campaign_id = $1 AND type IN ('opened', 'clicked', 'unsubscribed')) e
            GROUP BY message_id
        ) t ON t.message_id = m.id
        ORDER BY m.id
        """,  # noqa: S608 - $n values
        args,
        CAMPAIGN_RESULT_COLUMNS,
    )


async def campaign_exists(conn: Conn, campaign_id: UUID) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM campaigns WHERE id = $1)", campaign_id
    )
    return found
