"""SQL of suppressions: listing, export, adding and removing."""

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from mailfleet_common.db import Conn

from mailfleet_api import schemas
from mailfleet_api.queries.pages import newest_first, param

_SUPPRESSION_COLUMNS = """
    id, email, campaign_id, reason, source, created_at, expires_at,
    (expires_at IS NULL OR expires_at > now()) AS active
"""
# The unique index suppressions_scope_key is on (lower(email), coalesce(campaign_id, _NO_SCOPE)).
_SAME_SCOPE = """
    coalesce(s.campaign_id, '00000000-0000-0000-0000-000000000000'::uuid)
    = coalesce(r.campaign_id, '00000000-0000-0000-0000-000000000000'::uuid)
"""


def _suppression_where(filters: schemas.SuppressionFilter, args: list[Any]) -> str:
    """The condition for the filters given; their values are appended to `args`."""
    clauses: list[str] = []
    if filters.email is not None:
        clauses.append(f"lower(email) = lower({param(args, filters.email)})")
    if filters.q is not None:
        clauses.append(f"strpos(lower(email), lower({param(args, filters.q)})) > 0")
    if filters.reason is not None:
        clauses.append(f"reason = {param(args, filters.reason)}")
    if filters.source is not None:
        clauses.append(f"starts_with(source, {param(args, filters.source)})")
    if filters.campaign_id is not None:
        clauses.append(f"campaign_id = {param(args, filters.campaign_id)}")
    if filters.scope is not None:
        clauses.append(f"campaign_id IS {'' if filters.scope == 'global' else 'NOT '}NULL")
    if filters.active is not None:
        active = "(expires_at IS NULL OR expires_at > now())"
        clauses.append(active if filters.active else f"NOT {active}")
    if filters.created_after is not None:
        clauses.append(f"created_at >= {param(args, filters.created_after)}")
    if filters.created_before is not None:
        clauses.append(f"created_at < {param(args, filters.created_before)}")
    return " AND ".join(clauses) or "true"


def _suppression(row: asyncpg.Record) -> schemas.Suppression:
    return schemas.Suppression.model_validate(dict(row))


async def list_suppressions(
    conn: Conn,
    filters: schemas.SuppressionFilter,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[schemas.Suppression], bool]:
    """A page of matching suppressions, newest first, after the given (created_at, id).

    Returns the page and whether more follow.
    """
    args: list[Any] = []
    where = _suppression_where(filters, args)
    select = f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions"  # noqa: S608 - a constant
    rows, more = await newest_first(conn, select, "created_at", where, args, limit, after)
    return [_suppression(r) for r in rows], more


async def suppression_rows(
    conn: Conn, filters: schemas.SuppressionFilter
) -> AsyncIterator[asyncpg.Record]:
    """Every matching suppression, newest first, read through a server-side cursor.

    The caller holds a transaction open while it iterates.
    """
    args: list[Any] = []
    where = _suppression_where(filters, args)
    async for row in conn.cursor(
        f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions WHERE {where} "  # noqa: S608 - $n values
        "ORDER BY created_at DESC, id DESC",
        *args,
        prefetch=_EXPORT_PREFETCH,
    ):
        yield row


_EXPORT_PREFETCH = 2000


async def fetch_suppression(conn: Conn, suppression_id: int) -> schemas.Suppression | None:
    row = await conn.fetchrow(
        f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions WHERE id = $1",  # noqa: S608 - a constant
        suppression_id,
    )
    return None if row is None else _suppression(row)


async def fetch_suppression_of(
    conn: Conn, email: str, campaign_id: UUID | None
) -> schemas.Suppression | None:
    """The suppression of this address in this scope (NULL campaign: the global one)."""
    row = await conn.fetchrow(
        f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions "  # noqa: S608 - a constant
        """
        WHERE lower(email) = lower($1)
          AND coalesce(campaign_id, '00000000-0000-0000-0000-000000000000'::uuid)
              = coalesce($2::uuid, '00000000-0000-0000-0000-000000000000'::uuid)
        """,
        email,
        campaign_id,
    )
    return None if row is None else _suppression(row)


async def suppress_address(
    conn: Conn,
    email: str,
    campaign_id: UUID | None,
    reason: str,
    source: str,
    expires_at: datetime | None,
) -> int:
    """Suppress an address and cancel its unsent messages in that scope; returns how many."""
    cancelled: int = await conn.fetchval(
        "SELECT suppress_address($1, $2, $3, $4, $5)",
        email,
        campaign_id,
        reason,
        source,
        expires_at,
    )
    return cancelled


async def delete_suppression(conn: Conn, suppression_id: int) -> bool:
    """Remove a suppression; False if there is none with this id."""
    found = await conn.fetchval(
        "DELETE FROM suppressions WHERE id = $1 RETURNING true", suppression_id
    )
    return bool(found)


async def existing_campaigns(conn: Conn, campaign_ids: Sequence[UUID]) -> set[UUID]:
    """The given ids that name a campaign."""
    rows = await conn.fetch(
        "SELECT id FROM campaigns WHERE id = ANY($1::uuid[])", list(campaign_ids)
    )
    return {r["id"] for r in rows}


async def actively_suppressed(
    conn: Conn, emails: Sequence[str], campaign_ids: Sequence[UUID | None]
) -> set[int]:
    """Positions (0-based) of the (address, scope) pairs that have an unexpired suppression."""
    rows = await conn.fetch(
        """
        SELECT r.position - 1 AS position
        FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS r (email, campaign_id, position)
        WHERE EXISTS (
            SELECT 1 FROM suppressions s
            WHERE lower(s.email) = lower(r.email)
              AND (s.expires_at IS NULL OR s.expires_at > now())
              AND """  # noqa: S608 - a spliced constant only
        + _SAME_SCOPE
        + ")",
        list(emails),
        list(campaign_ids),
    )
    return {r["position"] for r in rows}


async def suppress_many(
    conn: Conn,
    emails: Sequence[str],
    campaign_ids: Sequence[UUID | None],
    reasons: Sequence[str],
    expires_at: Sequence[datetime | None],
    source: str,
) -> int:
    """Suppress each (address, scope) given, at most once each, and cancel their unsent messages.

    suppress_addresses() (migration 0004) holds the rules. Returns the number cancelled.
    """
    cancelled = await conn.fetchval(
        "SELECT suppress_addresses($1::text[], $2::uuid[], $3::text[], $4, $5::timestamptz[])",
        list(emails),
        list(campaign_ids),
        list(reasons),
        source,
        list(expires_at),
    )
    return int(cancelled or 0)
