"""The messages API at 10M messages: list and detail latency, and a 1M-row export's memory.

    uv run python -m bench.messages_api [--messages 10000000] [--requests 200] [--rebuild] [--drop]

Builds, once, a database `mailfleet_bench_messages` (reused by the next run while it holds
the same number of messages; `--rebuild` makes it again, `--drop` removes it at the end):
`--messages` messages over 100 campaigns (one of a tenth of them all) and 50 accounts, enqueued
over 30 days, in the statuses a busy fleet has (85 % sent, failed, deferred, queued, ...); a
sample of 1 % with two SMTP attempts each (451, then 250) and their events, opens and clicks;
opens and clicks of the large campaign. The migrations' indexes are built after the rows are
in, as a migration would build them over an existing table (`index_build_s` for 0019's).

Then, against `mailfleet api` running as a process: `--requests` calls of GET /api/messages
with each filter (none, campaign, account, status, email, created and sent time windows, and
the fifth page through cursors) and of GET /api/messages/{id}, with their p50 and p99 in ms;
and the large campaign's results and a million messages exported as CSV, with rows per
second and the API process's resident memory (VmRSS from /proc) before, at its peak during the
export and after. One JSON line.
"""

import argparse
import asyncio
import json
import random
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from mailfleet_common.crypto import generate_key
from mailfleet_common.migrate import migrate

from bench.scratch import ADMIN_DSN, RABBIT_URL
from tests.stack import Stack

DATABASE = "mailfleet_bench_messages"
CAMPAIGNS = 100
ACCOUNTS = 50
DAYS = 30
SAMPLE_EVERY = 100  # one message in this many has attempts and events


def _dsn(name: str) -> str:
    return urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{name}"))


async def _built(dsn: str, messages: int) -> bool:
    try:
        db = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        return False
    try:
        found = await db.fetchval(
            "SELECT messages FROM bench_built WHERE to_regclass('bench_built') IS NOT NULL"
        )
    except asyncpg.UndefinedTableError:
        found = None
    finally:
        await db.close()
    return bool(found == messages)


async def _recreate(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def _drop(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def build(dsn: str, messages: int) -> dict[str, float]:
    """Fill a freshly migrated database; returns how long it took and 0019's index builds."""
    started = time.perf_counter()
    db = await asyncpg.connect(dsn)
    try:
        await db.execute("SET synchronous_commit = off; SET maintenance_work_mem = '512MB'")
        # Built after the rows are in, as a migration over an existing table builds them.
        indexes = await db.fetch(
            """
            SELECT i.indexname, i.indexdef FROM pg_indexes i
            WHERE i.tablename IN ('messages', 'events', 'send_attempts')
              AND i.schemaname = 'public'
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
            """
        )
        for index in indexes:
            await db.execute(f'DROP INDEX "{index["indexname"]}"')
        start = datetime.now(UTC) - timedelta(days=DAYS)
        for months_ago in (0, 1, 2):
            await db.execute(
                "SELECT ensure_events_partition((now() - make_interval(months => $1))::date)",
                months_ago,
            )
        owner = await db.fetchval(
            "INSERT INTO users (email, password_hash, role) "
            "VALUES ('bench@example.com', 'x', 'admin') RETURNING id"
        )
        accounts = [
            await db.fetchval(
                """
                INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email,
                                      daily_limit)
                VALUES ($1, '127.0.0.1', 2525, 'none', $1 || '@example.com', 1000000)
                RETURNING id
                """,
                f"bench{n}",
            )
            for n in range(ACCOUNTS)
        ]
        campaigns = [
            await db.fetchval(
                "INSERT INTO campaigns (owner_id, name, subject, status) "
                "VALUES ($1, $2, 'bench', 'running') RETURNING id",
                owner,
                f"bench{n}",
            )
            for n in range(CAMPAIGNS)
        ]
        large = messages // 10
        # In slices, so no single statement holds gigabytes of sort or WAL.
        step = 1_000_000
        for first in range(1, messages + 1, step):
            await db.execute(
                """
                INSERT INTO messages (campaign_id, email, status, account_id, attempts,
                                      message_id, last_code, created_at, updated_at, sent_at,
                                      bounce)
                SELECT CASE WHEN g <= $3 THEN ($2::uuid[])[1]
                            ELSE ($2::uuid[])[2 + g % (array_length($2, 1) - 1)] END,
                       'r' || g || '@example.com', s.status,
                       CASE WHEN s.status IN ('queued', 'cancelled') THEN NULL
                            ELSE ($4::uuid[])[1 + g % array_length($4, 1)] END,
                       CASE WHEN s.status IN ('sent', 'failed', 'deferred') THEN 1 ELSE 0 END,
                       CASE WHEN s.status IN ('sent', 'failed', 'deferred')
                            THEN '<' || g || '@bench.example.com>' END,
                       CASE s.status WHEN 'sent' THEN 250 WHEN 'failed' THEN 550
                                     WHEN 'deferred' THEN 451 END,
                       t.at, t.at,
                       CASE WHEN s.status = 'sent' THEN t.at + interval '1 minute' END,
                       CASE WHEN s.status = 'sent' AND g % 997 = 0 THEN 'hard' END
                FROM generate_series($5::bigint, $6::bigint) g,
                     LATERAL (SELECT $7::timestamptz
                                     + make_interval(secs => $8 * 86400.0 * g / $1) AS at) t,
                     LATERAL (SELECT CASE
                         WHEN g % 100 < 85 THEN 'sent' WHEN g % 100 < 90 THEN 'failed'
                         WHEN g % 100 < 93 THEN 'deferred' WHEN g % 100 < 96 THEN 'queued'
                         WHEN g % 100 < 98 THEN 'cancelled' WHEN g % 100 = 98 THEN 'assigned'
                         WHEN g % 1000 = 999 THEN 'uncertain' ELSE 'sending' END AS status) s
                """,
                messages,
                campaigns,
                large,
                accounts,
                first,
                min(first + step - 1, messages),
                start,
                DAYS,
            )
        # The sample: two attempts each (451, then 250), their events, an open and a click.
        await db.execute(
            """
            INSERT INTO send_attempts (message_id, campaign_id, account_id, attempt, outcome,
                                       smtp_code, detail, attempted_at)
            SELECT m.id, m.campaign_id, m.account_id, a.n,
                   CASE a.n WHEN 1 THEN 'deferred' ELSE 'sent' END,
                   CASE a.n WHEN 1 THEN 451 ELSE 250 END,
                   CASE a.n WHEN 1 THEN '4.7.1 try again later' ELSE '2.0.0 OK queued' END,
                   m.created_at + make_interval(secs => 20 * a.n)
            FROM messages m, (VALUES (1), (2)) a (n)
            WHERE m.id % $1 = 7
            """,
            SAMPLE_EVERY,
        )
        await db.execute(
            """
            INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data)
            SELECT attempted_at, outcome, campaign_id, message_id, account_id,
                   jsonb_build_object('attempt', attempt, 'smtp_code', smtp_code,
                                      'detail', detail)
            FROM send_attempts
            """
        )
        await db.execute(
            """
            INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data)
            SELECT m.created_at + interval '1 hour', k.kind, m.campaign_id, m.id, m.account_id,
                   jsonb_build_object('ip', '198.51.100.' || (m.id % 250), 'user_agent',
                                      'Mozilla/5.0', 'machine', m.id % 3 = 0)
                   || CASE WHEN k.kind = 'clicked'
                           THEN jsonb_build_object('url', 'https://example.com/a')
                           ELSE '{}' END
            FROM messages m, (VALUES ('opened'), ('clicked')) k (kind)
            WHERE m.status = 'sent'
              AND (m.id % $1 = 7 OR (m.campaign_id = $2 AND m.id % 5 = 0))
              AND (k.kind = 'opened' OR m.id % 2 = 1)
            """,
            SAMPLE_EVERY,
            campaigns[0],
        )
        filled = time.perf_counter() - started
        mine = Path(__file__).parent.parent / "libs/common/mailfleet_common/migrations"
        ours = (mine / "0019_message_lookup.sql").read_text()
        index_build = 0.0
        for index in indexes:
            began = time.perf_counter()
            # A partitioned table's index is listed ON ONLY the parent: build the partitions' too.
            await db.execute(index["indexdef"].replace(" ON ONLY ", " ON ", 1))
            if index["indexname"] in ours:
                index_build += time.perf_counter() - began
        await db.execute("VACUUM ANALYZE")
        await db.execute("CREATE TABLE bench_built (messages bigint)")
        await db.execute("INSERT INTO bench_built VALUES ($1)", messages)
    finally:
        await db.close()
    return {
        "build_s": round(time.perf_counter() - started, 1),
        "fill_s": round(filled, 1),
        "index_build_s": round(index_build, 1),
    }


def _vm(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


class RssWatch:
    """Samples a process's VmRSS every few milliseconds, in a thread, for its peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _vm(self.pid)["VmRSS"])
            self._stop.wait(0.005)

    def __enter__(self) -> "RssWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _percentiles(timings: list[float]) -> tuple[float, float]:
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return round(statistics.median(ordered) * 1000, 1), round(p99 * 1000, 1)


async def _timed(client: httpx.AsyncClient, url: str, params: dict[str, Any]) -> float:
    began = time.perf_counter()
    response = await client.get(url, params=params)
    elapsed = time.perf_counter() - began
    if response.status_code != 200:
        raise RuntimeError(f"{url} {params}: {response.status_code} {response.text[:500]}")
    return elapsed


async def latencies(client: httpx.AsyncClient, db: Any, requests: int) -> dict[str, float]:
    """p50 and p99 of the list with each filter, of the fifth page, and of the detail."""
    rng = random.Random(11)
    campaigns = [r["id"] for r in await db.fetch("SELECT id FROM campaigns")]
    accounts = [r["id"] for r in await db.fetch("SELECT id FROM accounts")]
    top = await db.fetchval("SELECT max(id) FROM messages")
    first, last = await db.fetchrow("SELECT min(created_at), max(created_at) FROM messages")
    span = (last - first).total_seconds()
    sample = [
        r["id"]
        for r in await db.fetch(
            "SELECT id FROM messages WHERE id % $1 = 7 AND status = 'sent' LIMIT 5000",
            SAMPLE_EVERY,
        )
    ]

    def window(field: str) -> dict[str, str]:
        begin = first + timedelta(seconds=rng.uniform(0, span - 3600))
        end = begin + timedelta(hours=1)
        return {f"{field}_after": begin.isoformat(), f"{field}_before": end.isoformat()}

    cases: dict[str, Any] = {
        "none": lambda: {},
        "campaign": lambda: {"campaign_id": str(rng.choice(campaigns))},
        "account": lambda: {"account_id": str(rng.choice(accounts))},
        "status_failed": lambda: {"status": "failed"},
        "status_uncertain": lambda: {"status": "uncertain"},
        "email": lambda: {"email": f"R{rng.randint(1, top)}@Example.com"},
        "created": lambda: window("created"),
        "sent": lambda: window("sent"),
        "campaign_status": lambda: {
            "campaign_id": str(rng.choice(campaigns)),
            "status": "deferred",
        },
    }
    figures: dict[str, float] = {}
    for name, params in cases.items():
        timings = [
            await _timed(client, "/api/messages", {**params(), "limit": 50})
            for _ in range(requests)
        ]
        figures[f"list_{name}_p50_ms"], figures[f"list_{name}_p99_ms"] = _percentiles(timings)
    pages = []
    for _ in range(max(requests // 5, 10)):
        params = {"campaign_id": str(rng.choice(campaigns)), "limit": 50}
        for _ in range(4):
            params["cursor"] = (await client.get("/api/messages", params=params)).json()[
                "next_cursor"
            ]
        pages.append(await _timed(client, "/api/messages", params))
    figures["list_page5_p50_ms"], figures["list_page5_p99_ms"] = _percentiles(pages)
    detail = [
        await _timed(client, f"/api/messages/{rng.choice(sample)}", {}) for _ in range(requests)
    ]
    figures["detail_p50_ms"], figures["detail_p99_ms"] = _percentiles(detail)
    return figures


async def export(client: httpx.AsyncClient, pid: int, url: str, params: dict[str, Any]) -> Any:
    """Download an export, counting its rows; returns rows/s and the API's memory in MiB."""
    before = _vm(pid)["VmRSS"]
    rows = -1  # the header
    began = time.perf_counter()
    with RssWatch(pid) as watch:
        async with client.stream("GET", url, params=params, timeout=3600) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code} {await response.aread()!r}")
            async for chunk in response.aiter_bytes():
                rows += chunk.count(b"\n")
    elapsed = time.perf_counter() - began
    await asyncio.sleep(1)
    after = _vm(pid)["VmRSS"]
    return {
        "rows": rows,
        "s": round(elapsed, 1),
        "rows_per_s": round(rows / elapsed),
        "rss_before_mib": round(before / 1024, 1),
        "rss_peak_mib": round(watch.peak_kib / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
    }


async def run(messages: int, requests: int, rebuild: bool, drop: bool) -> dict[str, Any]:
    dsn = _dsn(DATABASE)
    line: dict[str, Any] = {"messages": messages}
    if rebuild or not await _built(dsn, messages):
        await _recreate(DATABASE)
        await migrate(dsn)
        line.update(await build(dsn, messages))
    else:
        await migrate(dsn)  # a newer checkout's migrations
        line["reused"] = True
    db = await asyncpg.connect(dsn)
    try:
        line["events"] = await db.fetchval("SELECT count(*) FROM events")
        large = await db.fetchval(
            "SELECT campaign_id FROM messages WHERE id = (SELECT min(id) FROM messages)"
        )
        async with Stack(
            postgres_dsn=dsn,
            rabbit_url=RABBIT_URL,
            crypto_keys=generate_key(),
            env={"MAILFLEET_LOG_LEVEL": "WARNING"},
        ) as stack:
            api = await stack.start_api()
            async with await stack.admin_client() as client:
                client.timeout = httpx.Timeout(60.0)
                line.update(await latencies(client, db, requests))
                campaign = await export(
                    client, api.pid, f"/api/campaigns/{large}/export", {"format": "csv"}
                )
                line.update({f"export_campaign_{k}": v for k, v in campaign.items()})
                bounds = await db.fetchrow(
                    "SELECT min(created_at), max(created_at) FROM messages "
                    "WHERE id <= (SELECT min(id) + 999999 FROM messages)"
                )
                assert bounds is not None
                params = {
                    "format": "csv",
                    "created_after": bounds[0].isoformat(),
                    "created_before": (bounds[1] + timedelta(microseconds=1)).isoformat(),
                }
                listed = await export(client, api.pid, "/api/messages/export", params)
                line.update({f"export_messages_{k}": v for k, v in listed.items()})
                line["rss_hwm_mib"] = round(_vm(api.pid)["VmHWM"] / 1024, 1)
    finally:
        await db.close()
        if drop:
            await _drop(DATABASE)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=200, help="calls per case")
    parser.add_argument("--rebuild", action="store_true", help="build the database again")
    parser.add_argument("--drop", action="store_true", help="remove the database at the end")
    args = parser.parse_args()
    line = asyncio.run(run(args.messages, args.requests, args.rebuild, args.drop))
    print(json.dumps(line))


if __name__ == "__main__":
    main()
