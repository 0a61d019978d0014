import asyncio, time
import asyncpg
from bench.scratch import Scratch
from bench.dispatch import _grow_fleet, _queue, _Discard
from mailfleet_common.db import create_pool
from mailfleet_common.settings import PostgresSettings
from mailfleet_dispatcher.assignment import Assigner
from mailfleet_dispatcher.settings import DispatchSettings

Q = """
        SELECT a.id, a.min_gap_ms, a.tags, account_effective_limit(a, $1) AS effective_limit,
               coalesce(u.reserved, 0) AS reserved, coalesce(f.n, 0) AS inflight
        FROM accounts a
        LEFT JOIN account_daily_usage u ON u.account_id = a.id AND u.day = $1
        LEFT JOIN (SELECT account_id, count(*) AS n FROM messages
                   WHERE status IN ('assigned', 'sending') GROUP BY account_id) f
               ON f.account_id = a.id
        WHERE a.status = 'active'
          AND ($2 OR a.id = ANY($3::uuid[]) OR a.tags && $4::text[])
          AND account_effective_limit(a, $1) > coalesce(u.reserved, 0)
        ORDER BY a.id
"""
async def main():
    async with Scratch() as scratch:
        db = await asyncpg.connect(scratch.dsn)
        pool = await create_pool(PostgresSettings(dsn=scratch.dsn, pool_min=1, pool_max=2))
        owner = await db.fetchval("INSERT INTO users (email, password_hash, role) VALUES ('b@example.com','x','admin') RETURNING id")
        campaign = await db.fetchval("INSERT INTO campaigns (owner_id, name, subject, text_body, status) VALUES ($1,'b','H','H','running') RETURNING id", owner)
        await _grow_fleet(db, 10000)
        await _queue(db, campaign, 10000, "a")
        a = Assigner(pool, _Discard(), DispatchSettings())
        while (await a.tick()).assigned: pass
        today = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
        plan = await db.fetch("EXPLAIN (ANALYZE, BUFFERS) " + Q, today, True, [], [])
        print("\n".join(r[0] for r in plan))
        for _ in range(3):
            t=time.perf_counter(); rows = await db.fetch(Q, today, True, [], []); print("fetch", (time.perf_counter()-t)*1000)
        await pool.close(); await db.close()
asyncio.run(main())
