"""SQL of uncertain messages and their resolutions."""

from datetime import datetime
from typing import Any

from mailfleet_common.db import Conn

from mailfleet_api import schemas
from mailfleet_api.queries.pages import newest_first, param

_UNCERTAIN_COLUMNS = (
    "id, campaign_id, account_id, email, message_id, attempts, sender_replica, last_code, "
    "last_error, updated_at AS flagged_at"
)


def _uncertain_where(filters: schemas.UncertainFilter, args: list[Any]) -> str:
    """The condition for the filters given; their values are appended to `args`."""
    clauses = ["status = 'uncertain'"]
    if filters.campaign_id is not None:
        clauses.append(f"campaign_id = {param(args, filters.campaign_id)}")
    if filters.account_id is not None:
        clauses.append(f"account_id = {param(args, filters.account_id)}")
    if filters.sender_replica is not None:
        clauses.append(f"sender_replica = {param(args, filters.sender_replica)}")
    if filters.flagged_after is not None:
        clauses.append(f"updated_at >= {param(args, filters.flagged_after)}")
    if filters.flagged_before is not None:
        clauses.append(f"updated_at < {param(args, filters.flagged_before)}")
    return " AND ".join(clauses)


async def list_uncertain(
    conn: Conn,
    filters: schemas.UncertainFilter,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[schemas.UncertainMessage], bool]:
    """A page of uncertain messages, newest first, after the given (flagged_at, id)."""
    args: list[Any] = []
    where = _uncertain_where(filters, args)
    select = f"SELECT {_UNCERTAIN_COLUMNS} FROM messages"  # noqa: S608 - a constant
    rows, more = await newest_first(conn, select, "updated_at", where, args, limit, after)
    return [schemas.UncertainMessage.model_validate(dict(r)) for r in rows], more


async def resolve_uncertain(
    conn: Conn,
    resolution: schemas.Resolution,
    message_ids: list[int] | None,
    filters: schemas.UncertainFilter | None,
    resolved_by: str,
    note: str | None,
) -> list[int]:
    """Resolve the chosen uncertain messages; returns the ids that were resolved.

    `sent` marks each delivered (sent_at: when it became uncertain, the nearest known time);
    `resend` puts it back to `queued`, keeping its Message-ID so a receiving server or mail
    client can tell the copies apart, and runs its campaign again if it had completed. One
    statement: the messages, a resolution row and an `uncertain-resolved` event each.
    """
    args: list[Any] = [resolution, resolved_by, note]
    where = _uncertain_where(filters or schemas.UncertainFilter(), args)
    if message_ids is not None:
        where += f" AND id = ANY({param(args, message_ids)}::bigint[])"
    rows = await conn.fetch(
        f"""
        WITH target AS (
            SELECT id FROM messages WHERE {where} FOR NO KEY UPDATE
        ), resolved AS (
            UPDATE messages m
            SET status = CASE WHEN $1 = 'sent' THEN 'sent' ELSE 'queued' END,
                sent_at = CASE WHEN $1 = 'sent' THEN m.updated_at ELSE m.sent_at END,
                account_id = CASE WHEN $1 = 'sent' THEN m.account_id END,
                assigned_at = CASE WHEN $1 = 'sent' THEN m.assigned_at END,
                next_attempt_at = NULL,
                updated_at = now()
            FROM target WHERE m.id = target.id AND m.status = 'uncertain'
            RETURNING m.id, m.campaign_id, m.account_id
        ), recorded AS (
            INSERT INTO uncertain_resolutions (message_id, resolution, resolved_by, note)
            SELECT id, $1, $2, $3 FROM resolved
        ), logged AS (
            INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data)
            SELECT now(), 'uncertain-resolved', campaign_id, id, account_id,
                   jsonb_build_object('resolution', $1::text, 'by', $2::text)
            FROM resolved
        ), reopened AS (
            UPDATE campaigns c SET status = 'running', completed_at = NULL, updated_at = now()
            WHERE $1 = 'resend' AND c.status = 'completed'
              AND c.id IN (SELECT campaign_id FROM resolved)
        )
        SELECT id FROM resolved ORDER BY id
        """,  # noqa: S608 - the condition is built from constants; values are parameters
        *args,
    )
    return [r["id"] for r in rows]


async def list_uncertain_resolutions(
    conn: Conn,
    message_id: int | None,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[schemas.UncertainResolution], bool]:
    """A page of resolutions, newest first, after the given (resolved_at, id)."""
    args: list[Any] = []
    where = "true" if message_id is None else f"message_id = {param(args, message_id)}"
    select = (
        "SELECT id, message_id, resolution, resolved_by, resolved_at, note "
        "FROM uncertain_resolutions"
    )
    rows, more = await newest_first(conn, select, "resolved_at", where, args, limit, after)
    return [schemas.UncertainResolution.model_validate(dict(r)) for r in rows], more
