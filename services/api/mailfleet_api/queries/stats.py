"""SQL of the fleet-wide stats."""

from mailfleet_common.db import Conn

from mailfleet_api import schemas
from mailfleet_api.queries.accounts import ACCOUNT_SELECT, account_from_row


async def count_campaigns_by_status(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM campaigns GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def usage_today(conn: Conn) -> list[schemas.AccountToday]:
    """Today's (UTC) usage against the effective limit of every account not archived."""
    rows = await conn.fetch(ACCOUNT_SELECT + " WHERE a.status <> 'archived' ORDER BY a.name, a.id")
    return [
        schemas.AccountToday(account_id=a.id, name=a.name, status=a.status, usage=a.today)
        for a in map(account_from_row, rows)
    ]
