"""SQL of account pools: tags, their members and the campaigns naming them."""

from typing import get_args

from mailfleet_common.db import Conn

from mailfleet_api import schemas


async def list_pools(
    conn: Conn, limit: int, after: str | None, tag: str | None = None
) -> tuple[list[schemas.Pool], bool]:
    """A page of the tags that an account carries or a campaign names (or only `tag`), by name.

    The page starts after the tag given; returns it and whether more follow.

    Member counts by status, today's capacity of the active members, and campaigns by status.
    """
    rows = await conn.fetch(
        """
        WITH d AS (SELECT (now() AT TIME ZONE 'utc')::date AS day),
        members AS (
            SELECT t.tag, a.status, account_effective_limit(a, d.day) AS day_limit,
                   coalesce(u.reserved, 0) AS reserved
            FROM accounts a CROSS JOIN d CROSS JOIN unnest(a.tags) AS t (tag)
            LEFT JOIN account_daily_usage u ON u.account_id = a.id AND u.day = d.day
            WHERE $3::text IS NULL OR a.tags @> ARRAY[$3]
        ), by_tag AS (
            SELECT tag, jsonb_object_agg(status, n) AS accounts,
                   sum(day_limit) FILTER (WHERE status = 'active') AS daily_capacity,
                   sum(left_today) FILTER (WHERE status = 'active') AS remaining_today
            FROM (SELECT tag, status, count(*) AS n, sum(day_limit) AS day_limit,
                         sum(greatest(day_limit - reserved, 0)) AS left_today
                  FROM members GROUP BY tag, status) s
            GROUP BY tag
        ), named AS (
            SELECT tag, jsonb_object_agg(status, n) AS campaigns
            FROM (SELECT t.tag, c.status, count(*) AS n
                  FROM campaigns c CROSS JOIN unnest(c.pool_tags) AS t (tag)
                  WHERE $3::text IS NULL OR c.pool_tags @> ARRAY[$3]
                  GROUP BY t.tag, c.status) s
            GROUP BY tag
        )
        SELECT tag, coalesce(b.accounts, '{}') AS accounts,
               coalesce(b.daily_capacity, 0) AS daily_capacity,
               coalesce(b.remaining_today, 0) AS remaining_today,
               coalesce(n.campaigns, '{}') AS campaigns
        FROM by_tag b FULL JOIN named n USING (tag)
        WHERE ($3::text IS NULL OR tag = $3) AND ($2::text IS NULL OR tag > $2)
        ORDER BY tag LIMIT $1
        """,
        limit + 1,
        after,
        tag,
    )
    statuses = get_args(schemas.AccountStatus), get_args(schemas.CampaignStatus)
    pools = [
        schemas.Pool.model_validate(
            {
                **dict(r),
                "accounts": {s: r["accounts"].get(s, 0) for s in statuses[0]},
                "campaigns": {s: r["campaigns"].get(s, 0) for s in statuses[1]},
            }
        )
        for r in rows[:limit]
    ]
    return pools, len(rows) > limit
