"""SQL of the fleet-wide stats."""

from mailfleet_common.db import Conn

from mailfleet_api import schemas
from mailfleet_api.queries.accounts import ACCOUNTS_TODAY


async def count_campaigns_by_status(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM campaigns GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def fleet_today(conn: Conn) -> schemas.FleetToday:
    """Today's (UTC) usage of every account not archived, summed, and accounts by status."""
    rows = await conn.fetch(
        f"""
        SELECT a.status, d.day, count(*) AS n, coalesce(sum(u.reserved), 0) AS reserved,
               coalesce(sum(u.sent), 0) AS sent, coalesce(sum(u.failed), 0) AS failed,
               coalesce(sum(account_effective_limit(a, d.day))
                        FILTER (WHERE a.status = 'active'), 0) AS effective_limit
        {ACCOUNTS_TODAY}
        WHERE a.status <> 'archived'
        GROUP BY a.status, d.day
        """
    )
    day = rows[0]["day"] if rows else await conn.fetchval("SELECT (now() AT TIME ZONE 'utc')::date")
    return schemas.FleetToday(
        day=day,
        accounts_by_status={r["status"]: r["n"] for r in rows},
        **{f: sum(r[f] for r in rows) for f in ("reserved", "sent", "failed", "effective_limit")},
    )
