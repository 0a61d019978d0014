"""What the fleet gauges cost as the fleet grows: 1,000 and 10,000 accounts.

    uv run python -m bench.metrics_scale [--accounts 1000,10000] [--sends 50] [--scrapes 50]

For each fleet size, in a throwaway database: accounts in every status (90 % active, a
third of them warming up, 5 % paused with one of a few reasons, 3 % disabled, 2 %
archived), today's usage for each, `sends` sent messages per account with 2 % hard bounces
and 0.2 % complaints, a backlog in every state over five running campaigns (40 queued per
account), and 5 suppressions per account. Then:

- refresh_s, refresh_cold_s: one refresh of every fleet gauge (fleet.compute(), the job's
  work, on a connection of its own): the median of 5, and the first one;
- format_s: formatting a refresh's result for /metrics (done once per refresh, in a worker
  thread), the median of 6;
- a real dispatcher process (`mailfleet-dispatcher`, refreshing every 2 s) is started on
  the database and, once its gauges are there, scraped `scrapes` times over HTTP:
  series (sample lines of its /metrics), fleet_series (those of the fleet gauges), bytes,
  scrape_p50_ms and scrape_p99_ms.

Prints one JSON line, keys suffixed with the fleet size (`refresh_s_10000`), and the ratios
of the largest size to the smallest (`ratio_refresh_s`, ...).
"""

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import asyncpg
import httpx
from mailfleet_common.crypto import generate_key
from mailfleet_common.settings import AccountRateSettings
from mailfleet_dispatcher import fleet

from bench.scratch import Scratch
from tests.stack import ServiceProcess, Stack

FLEET_PREFIXES = ("mailfleet_backlog_", "mailfleet_account", "mailfleet_campaigns_running",
                  "mailfleet_suppressions", "mailfleet_fleet_gauges_")  # fmt: skip
Db = "asyncpg.Connection[asyncpg.Record]"


async def build_fleet(db: Any, accounts: int, sends: int) -> None:
    """The fleet described in the module's docstring, with set-based inserts."""
    await db.execute(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit,
                              min_gap_ms, warmup_started_on, status, status_reason, tags)
        SELECT 'bench ' || g, '127.0.0.1', 2525, 'none', 'news' || g || '@example.com',
               200 + g % 300, CASE WHEN g % 4 = 0 THEN 30000 ELSE 0 END,
               CASE WHEN g % 3 = 0 THEN current_date - (g % 10) END,
               CASE WHEN g % 100 < 90 THEN 'active' WHEN g % 100 < 95 THEN 'paused'
                    WHEN g % 100 < 98 THEN 'disabled' ELSE 'archived' END,
               CASE WHEN g % 100 BETWEEN 90 AND 94
                    THEN (ARRAY['SMTP authentication failed: 535 5.7.8',
                                'bounce rate 6.10% over the last 1000 sends is above 5.00%',
                                'SMTP server unreachable (5 tries in a row)'])[1 + g % 3] END,
               ARRAY['pool-' || (g % 5)]
        FROM generate_series(1, $1) AS g
        """,
        accounts,
    )
    await db.execute(
        """
        INSERT INTO account_daily_usage (account_id, day, reserved, sent)
        SELECT id, (now() AT TIME ZONE 'UTC')::date, n + 5, n
        FROM (SELECT id, (hashtext(id::text) & 127) AS n FROM accounts
              WHERE status <> 'archived') a
        """
    )
    owner = await db.fetchval(
        "INSERT INTO users (email, password_hash, role) VALUES ('bench@example.com', 'x', 'admin')"
        " RETURNING id"
    )
    await db.execute(
        """
        INSERT INTO campaigns (owner_id, name, subject, text_body, status, pool_tags)
        SELECT $1, 'bench ' || g, 'Hello', 'Hi', 'running', ARRAY['pool-' || g]
        FROM generate_series(0, 4) AS g
        """,
        owner,
    )
    # Sent messages, spread over the past days, through each non-archived account.
    await db.execute(
        """
        INSERT INTO messages (campaign_id, email, status, account_id, attempts, sent_at,
                              bounce, bounced_at, complained_at, created_at)
        SELECT c.id, 's' || a.n || '-' || g || '@example.org', 'sent', a.id, 1,
               now() - make_interval(mins => g * 37), CASE WHEN (a.n + g) % 50 = 0 THEN 'hard' END,
               CASE WHEN (a.n + g) % 50 = 0 THEN now() END,
               CASE WHEN (a.n * 7 + g) % 500 = 0 THEN now() END,
               now() - make_interval(mins => g * 37 + 5)
        FROM (SELECT id, row_number() OVER (ORDER BY id) AS n, tags FROM accounts
              WHERE status <> 'archived') a
        JOIN campaigns c ON c.pool_tags && a.tags
        CROSS JOIN generate_series(1, $1) AS g
        """,
        sends,
    )
    # The backlog: 40 queued messages per account, and some in every other unfinished state.
    await db.execute(
        """
        INSERT INTO messages (campaign_id, email, status, account_id, next_attempt_at, created_at)
        SELECT c.id, 'q' || g || '@example.org',
               CASE WHEN g % 100 < 90 THEN 'queued' WHEN g % 100 < 95 THEN 'deferred'
                    WHEN g % 100 < 98 THEN 'assigned' WHEN g % 100 < 99 THEN 'sending'
                    ELSE 'uncertain' END,
               CASE WHEN g % 100 >= 95 THEN (SELECT id FROM accounts LIMIT 1) END,
               CASE WHEN g % 100 BETWEEN 90 AND 94 THEN now() + interval '10 minutes' END,
               now() - make_interval(secs => g % 3600)
        FROM generate_series(1, $1 * 40) AS g
        JOIN campaigns c ON c.name = 'bench ' || (g % 5)
        """,
        accounts,
    )
    await db.execute(
        """
        INSERT INTO suppressions (email, reason, expires_at)
        SELECT 'x' || g || '@example.org', 'bounce',
               CASE WHEN g % 10 = 0 THEN now() + interval '30 days' END
        FROM generate_series(1, $1 * 5) AS g
        """,
        accounts,
    )
    await db.execute("VACUUM ANALYZE")


async def refresh_times(dsn: str) -> tuple[float, float, float]:
    """The first refresh, the median of the next five, and the median formatting, in seconds."""
    conn = await fleet.connect(dsn)
    collector = fleet.FleetCollector()
    try:
        times, formatting = [], []
        for _ in range(6):
            started = time.perf_counter()
            snapshot = await fleet.compute(conn, AccountRateSettings())
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            await collector.publish(snapshot)
            formatting.append(time.perf_counter() - started)
    finally:
        await conn.close()
    return times[0], statistics.median(times[1:]), statistics.median(formatting)


async def scrapes(dispatcher: ServiceProcess, count: int) -> dict[str, float]:
    """Wait for the dispatcher's fleet gauges, then scrape `count` times."""
    async with httpx.AsyncClient(base_url=dispatcher.url, timeout=30) as client:
        deadline = time.monotonic() + 300
        while "mailfleet_fleet_gauges_refreshed_timestamp_seconds " not in (
            body := (await client.get("/metrics")).text
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the dispatcher never exported its fleet gauges")
            await asyncio.sleep(0.5)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            response = await client.get("/metrics")
            times.append((time.perf_counter() - started) * 1000)
            body = response.text
    samples = [line for line in body.splitlines() if line and not line.startswith("#")]
    times.sort()
    return {
        "series": len(samples),
        "fleet_series": sum(line.startswith(FLEET_PREFIXES) for line in samples),
        "bytes": len(body.encode()),
        "scrape_p50_ms": round(statistics.median(times), 1),
        "scrape_p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
    }


async def measure(accounts: int, sends: int, count: int) -> dict[str, float]:
    async with Scratch() as scratch:
        db = await asyncpg.connect(scratch.dsn)
        try:
            started = time.perf_counter()
            await build_fleet(db, accounts, sends)
            built_s = time.perf_counter() - started
        finally:
            await db.close()
        cold, warm, formatting = await refresh_times(scratch.dsn)
        env = {
            "MAILFLEET_LOG_LEVEL": "WARNING",
            "MAILFLEET_DISPATCHER__FLEET_GAUGES_S": "2",
            # No assignment beyond the first tick: the state scraped stays the one built.
            "MAILFLEET_DISPATCHER__TICK_MS": "3600000",
        }
        async with Stack(
            postgres_dsn=scratch.dsn,
            rabbit_url=scratch.rabbit_url,
            crypto_keys=generate_key(),
            env=env,
        ) as stack:
            dispatcher = await stack.start_dispatcher()
            figures = await scrapes(dispatcher, count)
    return {
        "build_s": round(built_s, 1),
        "refresh_cold_s": round(cold, 3),
        "refresh_s": round(warm, 3),
        "format_s": round(formatting, 3),
        **figures,
    }


async def run(sizes: list[int], sends: int, count: int) -> dict[str, float]:
    line: dict[str, float] = {"sends_per_account": sends, "scrapes": count}
    by_size = {size: await measure(size, sends, count) for size in sorted(sizes)}
    for size, figures in by_size.items():
        line.update({f"{key}_{size}": value for key, value in figures.items()})
    small, large = by_size[min(by_size)], by_size[max(by_size)]
    for key in ("refresh_s", "series", "bytes", "scrape_p50_ms"):
        line[f"ratio_{key}"] = round(large[key] / max(small[key], 1e-9), 1)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", default="1000,10000", help="fleet sizes, comma-separated")
    parser.add_argument("--sends", type=int, default=50, help="sent messages per account")
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    sizes = [int(s) for s in args.accounts.split(",")]
    print(json.dumps(asyncio.run(run(sizes, args.sends, args.scrapes))))


if __name__ == "__main__":
    main()
