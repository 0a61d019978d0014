"""`mailfleet retention` over millions of rows, beside a writer that must not be held up.

    uv run python -m bench.retention [--events 3000000] [--attempts 2000000] [--keys 1000000]

In a throwaway database: `events` rows spread over 12 monthly partitions (14 to 3 months
old) plus old rows in the default partition; `attempts` SMTP attempts over the past year,
two per message, a tenth of the messages not final; `keys` idempotency keys over the past 30
days; `reports` inbound reports over the past year. Then one retention run (events: 6 months,
reports and attempts: 180 days, keys: 7 days, batches of `--batch-size`) while a writer
commits, one transaction after another, an event, a send attempt and an idempotency key,
as the recorder and the API do.

It prints one JSON line: what went (`partitions_dropped`, `partition_rows`, `rows_deleted`
per table), `total_s` for the run, `rows_per_s` (partition rows and deleted rows over
`total_s`), `batched_rows_per_s` (deleted rows over the time spent in batches),
`max_batch_ms` (the longest batch transaction), `max_partition_ms` (the longest detach and
drop of a partition), and the writer's longest and 99th-percentile transaction during the
run and before it (`writer_*`), and the longest the writer was seen waiting for a lock
(`writer_lock_wait_max_ms`, pg_stat_activity sampled every 2 ms): how long retention's locks
held it up.
"""

import argparse
import asyncio
import json
import time
from typing import Any

import asyncpg
from mailfleet_api.retention import run_retention
from mailfleet_api.settings import RetentionSettings

from bench.scratch import Scratch

MONTHS = range(3, 15)
DEFAULT_ROWS_SHARE = 0.02


async def _fill(db: Any, events: int, attempts: int, keys: int, reports: int) -> int:
    """Fill the tables; returns how many events the partitions that will go hold."""
    await db.execute("SET synchronous_commit = off")
    campaign, account = await db.fetchrow(
        """
        WITH owner AS (
            INSERT INTO users (email, password_hash, role)
            VALUES ('bench@example.com', 'x', 'admin') RETURNING id
        ), account AS (
            INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit)
            VALUES ('bench', '127.0.0.1', 2525, 'none', 'news@example.com', 1000000) RETURNING id
        ), campaign AS (
            INSERT INTO campaigns (owner_id, name, subject)
            SELECT id, 'bench', 'retention' FROM owner RETURNING id
        )
        SELECT campaign.id, account.id FROM campaign, account
        """
    )
    messages = attempts // 2
    await db.execute(
        """
        INSERT INTO messages (campaign_id, email, status, account_id)
        SELECT $1, 'r' || g || '@example.com',
               CASE WHEN g % 10 = 0 THEN 'deferred' WHEN g % 10 = 1 THEN 'failed' ELSE 'sent' END,
               $2
        FROM generate_series(1, $3) g
        """,
        campaign,
        account,
        messages,
    )
    await db.execute(
        """
        INSERT INTO send_attempts (message_id, campaign_id, account_id, attempt, outcome,
                                   attempted_at)
        SELECT m, $1, $2, a, 'sent', now() - make_interval(secs => (365 * 86400.0 * m) / $3)
        FROM generate_series(1, $3) m, generate_series(1, 2) a
        """,
        campaign,
        account,
        messages,
    )
    per_month = int(events * (1 - DEFAULT_ROWS_SHARE)) // len(MONTHS)
    going = 0
    for ago in MONTHS:
        await db.execute(
            "SELECT ensure_events_partition((now() - make_interval(months => $1))::date)", ago
        )
        await db.execute(
            """
            INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id)
            SELECT date_trunc('month', now() - make_interval(months => $1))
                       + make_interval(secs => 27 * 86400.0 * g / $2),
                   'opened', $3, g, $4
            FROM generate_series(1, $2) g
            """,
            ago,
            per_month,
            campaign,
            account,
        )
        going += per_month if ago > 6 else 0
    # Rows no partition was made for, years old, in the default partition.
    await db.execute(
        """
        INSERT INTO events (occurred_at, type, account_id)
        SELECT timestamptz '2020-01-01' + make_interval(secs => g), 'clicked', $2
        FROM generate_series(1, $1) g
        """,
        events - per_month * len(MONTHS),
        account,
    )
    await db.execute(
        """
        INSERT INTO idempotency_keys (key, principal, request_hash, status_code, response,
                                      created_at)
        SELECT 'k' || g, 'bench', '\\x00', 200, '{"accepted": 1}',
               now() - make_interval(secs => 30 * 86400.0 * g / $1)
        FROM generate_series(1, $1) g
        """,
        keys,
    )
    await db.execute(
        """
        INSERT INTO inbound_reports (account_id, folder, uidvalidity, uid, digest, kind, size,
                                     received_at, published_at)
        SELECT $1, 'INBOX', 1, g, decode(md5(g::text), 'hex'), 'bounce', 2000,
               now() - make_interval(secs => 365 * 86400.0 * g / $2), now()
        FROM generate_series(1, $2) g
        """,
        account,
        reports,
    )
    await db.execute("VACUUM ANALYZE")
    return going


class _Writer:
    """Commits an event, a send attempt and an idempotency key, one transaction at a time."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.times: list[float] = []
        self.stopping = asyncio.Event()
        self.pid: int | None = None

    async def run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        self.pid = await conn.fetchval("SELECT pg_backend_pid()")
        try:
            n = 0
            while not self.stopping.is_set():
                n += 1
                started = time.perf_counter()
                async with conn.transaction():
                    await conn.execute("INSERT INTO events (occurred_at, type) VALUES (now(), 'w')")
                    await conn.execute(
                        """
                        INSERT INTO send_attempts (message_id, campaign_id, account_id, attempt,
                                                   outcome, attempted_at)
                        SELECT 10, campaign_id, account_id, 100 + $1, 'deferred', now()
                        FROM messages WHERE id = 10
                        """,
                        n,
                    )
                    await conn.execute(
                        "INSERT INTO idempotency_keys (key, principal, request_hash, "
                        "status_code, response) VALUES ($1, 'writer', '\\x00', 200, '{}')",
                        f"w{n}",
                    )
                self.times.append(time.perf_counter() - started)
                await asyncio.sleep(0.005)
        finally:
            await conn.close()


async def _lock_waits(dsn: str, writer: _Writer, stopping: asyncio.Event) -> float:
    """The longest time the writer was seen waiting for a lock (sampled every 2 ms)."""
    conn = await asyncpg.connect(dsn)
    longest = 0.0
    try:
        while not stopping.is_set():
            waited = await conn.fetchval(
                """
                SELECT extract(epoch FROM clock_timestamp() - query_start)::float8
                FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'
                """,
                writer.pid,
            )
            longest = max(longest, waited or 0.0)
            await asyncio.sleep(0.002)
    finally:
        await conn.close()
    return longest


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    settings = RetentionSettings(
        events_months=6,
        reports_days=180,
        attempts_days=180,
        idempotency_key_hours=7 * 24,
        batch_size=args.batch_size,
    )
    async with Scratch(broker=False) as scratch:
        db = await asyncpg.connect(scratch.dsn)
        try:
            started = time.perf_counter()
            going = await _fill(db, args.events, args.attempts, args.keys, args.reports)
            fill_s = time.perf_counter() - started
            writer = _Writer(scratch.dsn)
            writing = asyncio.create_task(writer.run())
            await asyncio.sleep(3)
            baseline = len(writer.times)
            sampling = asyncio.Event()
            sampler = asyncio.create_task(_lock_waits(scratch.dsn, writer, sampling))
            started = time.perf_counter()
            report = await run_retention(db, settings)
            total_s = time.perf_counter() - started
            sampling.set()
            writer.stopping.set()
            await writing
            lock_wait_s = await sampler
        finally:
            await db.close()
    deleted = {t.table: t.rows for t in report.tables}
    in_batches = sum(t.seconds for t in report.tables)
    during, before = sorted(writer.times[baseline:]), sorted(writer.times[:baseline])
    return {
        "events": args.events,
        "attempts": args.attempts,
        "keys": args.keys,
        "reports": args.reports,
        "batch_size": args.batch_size,
        "fill_s": round(fill_s, 1),
        "partitions_dropped": len(report.dropped_partitions),
        "partitions_busy": len(report.busy_partitions),
        "partition_rows": going,
        "rows_deleted": deleted,
        "total_s": round(total_s, 2),
        "rows_per_s": round((going + sum(deleted.values())) / total_s),
        "batched_rows_per_s": round(sum(deleted.values()) / max(in_batches, 1e-9)),
        "batches": sum(t.batches for t in report.tables),
        "max_batch_ms": _ms(max(t.max_batch_s for t in report.tables)),
        "max_partition_ms": _ms(report.max_partition_s),
        "writer_transactions": len(during),
        "writer_lock_wait_max_ms": _ms(lock_wait_s),
        "writer_max_ms": _ms(during[-1]),
        "writer_p99_ms": _ms(_p99(during)),
        "writer_before_max_ms": _ms(before[-1]),
        "writer_before_p99_ms": _ms(_p99(before)),
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _p99(ordered: list[float]) -> float:
    return ordered[max(0, round(len(ordered) * 0.99) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--attempts", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--reports", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    print(json.dumps(asyncio.run(measure(parser.parse_args()))))


if __name__ == "__main__":
    main()
