"""A large throwaway database for read benchmarks: N messages and 3N events, migrated.

    uv run python -m bench.dataset [--messages 10000000] [--rebuild] [--drop]

Database `mailfleet_bench_dataset` (on MAILFLEET_BENCH_POSTGRES_DSN's server): 1,000 accounts,
100 campaigns started over the past 60 days (one a day or so, each sending for about a day),
N messages spread over them (90 % sent, the rest failed, deferred, queued or cancelled; some
bounced, complained about or replied to), and 3N events: each message's delivery attempt,
then opens (a fifth of them by machines), clicks, bounces, complaints, replies and
unsubscribes in the two days after it was sent. Built with generate_series, the indexes
dropped while loading and built again after; the counters are then computed by the
migration's own backfill (rebuild_counters), so they are consistent with the rows.

Kept for the next run when it already holds N messages (it takes minutes to build);
`--rebuild` builds it again, `--drop` drops it and exits. Prints one JSON line: its size, and
`build_s` (0 when it was kept; `built_s` is how long its build took).
"""

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from mailfleet_common.migrate import migrate

from bench.scratch import ADMIN_DSN

NAME = "mailfleet_bench_dataset"
DSN = urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{NAME}"))
CAMPAIGNS = 100
ACCOUNTS = 1000
COUNTING_TRIGGERS = {
    "messages": ("messages_counted_insert", "messages_counted_update", "messages_counted_delete"),
    "events": ("events_counted",),
}

# Message g (its id, from 1) belongs to campaign g % 100 and account g * 7919 % 1000; its
# campaign sends from (99 - g % 100) * 0.6 days ago for a day. The same expressions place its
# events, so messages and events load side by side.
_MESSAGES = """
    INSERT INTO messages (campaign_id, email, status, account_id, attempts, sent_at, bounce,
                          bounced_at, complained_at, replied_at, created_at, updated_at)
    SELECT c.ids[g % 100 + 1], 'r' || g || '@example.com', s.status,
           CASE WHEN s.status <> 'queued' THEN a.ids[g * 7919 % 1000 + 1] END,
           CASE WHEN s.status IN ('queued', 'cancelled') THEN 0 ELSE 1 END,
           CASE WHEN s.status = 'sent' THEN t.at END,
           CASE WHEN s.status = 'sent' AND g % 50 = 7 THEN 'hard'
                WHEN s.status = 'sent' AND g % 50 = 8 THEN 'soft' END,
           CASE WHEN s.status = 'sent' AND g % 50 IN (7, 8) THEN t.at + interval '1 hour' END,
           CASE WHEN s.status = 'sent' AND g % 1000 = 9 THEN t.at + interval '3 hours' END,
           CASE WHEN s.status = 'sent' AND g % 200 = 11 THEN t.at + interval '5 hours' END,
           t.at - interval '1 hour', t.at
    FROM generate_series($1::bigint, $2::bigint) g
    CROSS JOIN (SELECT array_agg(id ORDER BY name) AS ids FROM campaigns) c
    CROSS JOIN (SELECT array_agg(id ORDER BY name) AS ids FROM accounts) a
    CROSS JOIN LATERAL (
        SELECT now() - ((99 - g % 100) * 0.6 + 1 + (g * 104729 % 86400) / 86400.0)
                       * interval '1 day' AS at
    ) t
    CROSS JOIN LATERAL (
        SELECT CASE WHEN g % 100 < 90 THEN 'sent' WHEN g % 100 < 93 THEN 'failed'
                    WHEN g % 100 < 95 THEN 'deferred' WHEN g % 100 < 97 THEN 'queued'
                    ELSE 'cancelled' END AS status
    ) s
"""
# Three events a message (k = 0, 1, 2): its attempt, then what followed it.
_EVENTS = """
    INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data)
    SELECT t.at + k * (g * 31 % 43200) * interval '1 second', e.type, c.ids[g % 100 + 1], g,
           a.ids[g * 7919 % 1000 + 1], e.data
    FROM generate_series($1::bigint, $2::bigint) g
    CROSS JOIN generate_series(0, 2) k
    CROSS JOIN (SELECT array_agg(id ORDER BY name) AS ids FROM campaigns) c
    CROSS JOIN (SELECT array_agg(id ORDER BY name) AS ids FROM accounts) a
    CROSS JOIN LATERAL (
        SELECT now() - ((99 - g % 100) * 0.6 + 1 + (g * 104729 % 86400) / 86400.0)
                       * interval '1 day' AS at
    ) t
    CROSS JOIN LATERAL (
        SELECT CASE
                   WHEN k = 0 THEN CASE WHEN g % 100 < 90 THEN 'sent' WHEN g % 100 < 93
                                        THEN 'failed' ELSE 'deferred' END
                   WHEN g % 100 >= 90 THEN 'deferred'
                   WHEN k = 1 OR g % 20 < 8 THEN 'opened'
                   WHEN g % 20 < 16 THEN 'clicked'
                   WHEN g % 50 IN (7, 8) THEN 'bounced'
                   WHEN g % 1000 = 9 THEN 'complained'
                   WHEN g % 200 = 11 THEN 'replied'
                   WHEN g % 20 = 17 THEN 'unsubscribed'
                   ELSE 'opened' END AS type,
               CASE WHEN k > 0 AND g % 100 < 90 AND g % 20 < 16
                    THEN jsonb_build_object('machine', g % 5 = 0)
                    WHEN k > 0 AND g % 50 = 7 THEN '{"bounce": "hard"}'::jsonb
                    WHEN k > 0 AND g % 50 = 8 THEN '{"bounce": "soft"}'::jsonb
                    ELSE '{}'::jsonb END AS data
    ) e
"""


async def _size(dsn: str) -> dict[str, float] | None:
    """The size recorded in the dataset's database, or None without one."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        return None
    try:
        row = await conn.fetchrow(
            "SELECT messages, events, built_s FROM bench_dataset"
            " WHERE to_regclass('bench_dataset') IS NOT NULL"
        )
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()
    return None if row is None else dict(row)


async def drop() -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')
    finally:
        await conn.close()


async def _in_slices(dsn: str, statement: str, total: int, workers: int) -> None:
    """Run `statement` over 1..total in `workers` concurrent slices of ids."""
    step = -(-total // workers)

    async def one(first: int) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SET synchronous_commit = off")
            await conn.execute(statement, first, min(first + step - 1, total))
        finally:
            await conn.close()

    await asyncio.gather(*(one(first) for first in range(1, total + 1, step)))


async def _drop_indexes(conn: "asyncpg.Connection[asyncpg.Record]", table: str) -> list[str]:
    """Drop the table's indexes that back no constraint; returns their definitions."""
    rows = await conn.fetch(
        """
        SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition
        FROM pg_index i
        WHERE i.indrelid = $1::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        """,
        table,
    )
    for row in rows:
        await conn.execute(f"DROP INDEX {row['name']}")
    return [row["definition"] for row in rows]


async def build(messages: int) -> float:
    """Build the dataset from nothing; returns the seconds it took."""
    started = time.perf_counter()
    await drop()
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{NAME}"')
    finally:
        await admin.close()
    await migrate(DSN)
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(
            f"""
            INSERT INTO users (email, password_hash, role)
            VALUES ('bench@example.com', 'x', 'admin');
            INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit,
                                  tags)
            SELECT 'account-' || lpad(g::text, 4, '0'), 'smtp.example.com', 587, 'starttls',
                   'news' || g || '@example.com', 5000, ARRAY['pool-' || g % 10]
            FROM generate_series(1, {ACCOUNTS}) g;
            INSERT INTO campaigns (owner_id, name, subject, status, created_at, updated_at)
            SELECT u.id, 'campaign-' || lpad(g::text, 3, '0'), 'Hello',
                   CASE WHEN g > {CAMPAIGNS} - 3 THEN 'running' ELSE 'completed' END,
                   now() - ((100 - g) * 0.6 + 1.1) * interval '1 day', now()
            FROM users u, generate_series(1, {CAMPAIGNS}) g;
            """  # noqa: S608 - constants only
        )
        # Older events land in the default partition, as they would after a long outage.
        await conn.execute(
            "SELECT ensure_events_partition((current_date - m * 28)::date)"
            " FROM generate_series(0, 3) m"
        )
        indexes = [
            *await _drop_indexes(conn, "messages"),
            *await _drop_indexes(conn, "events"),
        ]
        for table, triggers in COUNTING_TRIGGERS.items():
            for trigger in triggers:
                await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        await asyncio.gather(
            _in_slices(DSN, _MESSAGES, messages, 1), _in_slices(DSN, _EVENTS, messages, 1)
        )
        await asyncio.gather(*(_build_index(definition) for definition in indexes))
        await conn.execute("VACUUM ANALYZE messages")
        await conn.execute("ANALYZE events")
        async with conn.transaction():
            for table, triggers in COUNTING_TRIGGERS.items():
                for trigger in triggers:
                    await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
            await conn.execute("SELECT rebuild_counters()")
        await conn.execute("VACUUM ANALYZE counter_buckets")
        built_s = time.perf_counter() - started
        await conn.execute(
            "CREATE TABLE bench_dataset AS SELECT $1::bigint AS messages, "
            "(SELECT count(*) FROM events) AS events, $2::float8 AS built_s",
            messages,
            built_s,
        )
    finally:
        await conn.close()
    return built_s


_INDEX_BUILDS = asyncio.Semaphore(2)


async def _build_index(definition: str) -> None:
    async with _INDEX_BUILDS:
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute("SET maintenance_work_mem = '256MB'")
            await conn.execute(definition)
        finally:
            await conn.close()


async def ensure(messages: int, rebuild: bool = False) -> dict[str, float]:
    """The dataset at this size, built unless it is there already; its figures."""
    size = None if rebuild else await _size(DSN)
    if size is not None and size["messages"] == messages:
        return {**size, "build_s": 0.0}
    built_s = await build(messages)
    size = await _size(DSN)
    assert size is not None
    return {**size, "build_s": round(built_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--rebuild", action="store_true", help="build it again even if kept")
    parser.add_argument("--drop", action="store_true", help="drop the dataset and exit")
    args = parser.parse_args()
    if args.drop:
        asyncio.run(drop())
        print(json.dumps({"dropped": NAME}))
        return
    figures = asyncio.run(ensure(args.messages, args.rebuild))
    print(json.dumps({"database": NAME, **figures}))


if __name__ == "__main__":
    main()
