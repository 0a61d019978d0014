"""SQL of the fleet-wide stats."""

from mailfleet_common.db import Conn

from mailfleet_api import schemas
from mailfleet_api.queries.accounts import ACCOUNTS_TODAY, USAGE_TODAY
from mailfleet_api.queries.columns import field_expressions, select_list

_ACCOUNT_TODAY = select_list(
    field_expressions(schemas.AccountToday, "a.{}", {"account_id": "a.id", "usage": USAGE_TODAY})
)


async def count_campaigns_by_status(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM campaigns GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def usage_today(conn: Conn) -> list[schemas.AccountToday]:
    """Today's (UTC) usage against the effective limit of every account not archived."""
    rows = await conn.fetch(
        f"SELECT {_ACCOUNT_TODAY} {ACCOUNTS_TODAY}"
        " WHERE a.status <> 'archived' ORDER BY a.name, a.id"
    )
    return [schemas.AccountToday.model_validate(dict(r)) for r in rows]
