"""`mailfleet retention` against the test database: partitions, batches, what is kept."""

import asyncio
from typing import Any
from uuid import UUID

import asyncpg
from mailfleet_api.cli import app
from mailfleet_api.retention import run_retention
from mailfleet_api.settings import RetentionSettings
from typer.testing import CliRunner

from .conftest import Conn

STATES = ("queued", "assigned", "sending", "deferred", "uncertain", "sent", "failed", "cancelled")
FINAL = {"sent", "failed", "cancelled"}

KEEP = RetentionSettings(
    events_months=12, reports_days=30, attempts_days=30, idempotency_key_hours=24, batch_size=10
)


async def make_campaign(db: Conn) -> tuple[UUID, UUID]:
    """A user, an account and a campaign; returns the campaign's and the account's ids."""
    owner = await db.fetchval(
        "INSERT INTO users (email, password_hash, role) VALUES ('o@example.com', 'x', 'admin') "
        "RETURNING id"
    )
    account = await db.fetchval(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit)
        VALUES ('a', 'smtp.example.com', 587, 'starttls', 'news@example.com', 100) RETURNING id
        """
    )
    campaign = await db.fetchval(
        "INSERT INTO campaigns (owner_id, name, subject) VALUES ($1, 'c', 's') RETURNING id", owner
    )
    return campaign, account


async def add_messages(db: Conn, campaign: UUID, account: UUID, status: str, count: int) -> None:
    """`count` messages in `status`, each with one attempt 40 days ago and one an hour ago."""
    await db.execute(
        """
        WITH m AS (
            INSERT INTO messages (campaign_id, email, status, account_id)
            SELECT $1, $3 || '-' || n || '@example.com', $3, $2 FROM generate_series(1, $4) n
            RETURNING id
        )
        INSERT INTO send_attempts (message_id, campaign_id, account_id, attempt, outcome,
                                   attempted_at)
        SELECT m.id, $1, $2, a, 'deferred', now() - CASE a WHEN 1 THEN interval '40 days'
                                                           ELSE interval '1 hour' END
        FROM m, generate_series(1, 2) a
        """,
        campaign,
        account,
        status,
        count,
    )


async def attempts_by_status(db: Conn) -> dict[tuple[str, bool], int]:
    rows = await db.fetch(
        """
        SELECT m.status, s.attempted_at < now() - interval '30 days' AS old, count(*) AS n
        FROM send_attempts s JOIN messages m ON m.id = s.message_id GROUP BY 1, 2
        """
    )
    return {(r["status"], r["old"]): r["n"] for r in rows}


async def month_partition(db: Conn, months_ago: int) -> str:
    """Create the events partition of the month `months_ago` back, with one event in it."""
    await db.execute(
        "SELECT ensure_events_partition((now() - make_interval(months => $1))::date)", months_ago
    )
    name: str = await db.fetchval(
        "SELECT format('events_%s', to_char(now() - make_interval(months => $1), 'YYYY_MM'))",
        months_ago,
    )
    await db.execute(
        "INSERT INTO events (occurred_at, type) "
        "VALUES (date_trunc('month', now() - make_interval(months => $1)) + interval '1 day', 'x')",
        months_ago,
    )
    return name


async def existing_tables(db: Conn, names: list[str]) -> set[str]:
    rows = await db.fetch("SELECT relname FROM pg_class WHERE relname = ANY ($1)", names)
    return {r["relname"] for r in rows}


async def test_partitions_older_than_the_cutoff_are_dropped_and_newer_kept(db: Conn) -> None:
    # 12 months kept: a month is dropped once its end is over 12 months ago.
    names = {ago: await month_partition(db, ago) for ago in (15, 14, 13, 12, 11, 1)}
    # A run interrupted after detaching left this one outside events: the next drops it.
    await db.execute(f"ALTER TABLE events DETACH PARTITION {names[14]}")
    await db.execute(
        "INSERT INTO events (occurred_at, type) VALUES "
        "('2001-01-01', 'old'), ('2001-02-01', 'old'), (now() + interval '10 years', 'new')"
    )
    report = await run_retention(db, KEEP)
    assert report.dropped_partitions == sorted([names[15], names[14], names[13]])
    assert report.busy_partitions == []
    assert await existing_tables(db, list(names.values())) == {names[12], names[11], names[1]}
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'x'") == 3
    assert await db.fetchval("SELECT count(*) FROM events_default") == 1
    assert {t.table: t.rows for t in report.tables}["events_default"] == 2
    # A second run finds nothing left to do.
    again = await run_retention(db, KEEP)
    assert again.dropped_partitions == []
    assert sum(t.rows for t in again.tables) == 0


async def test_attempts_of_messages_not_final_are_never_pruned(db: Conn) -> None:
    campaign, account = await make_campaign(db)
    # Unfinished messages come first in time order, so batches must walk past them.
    for status in STATES:
        await add_messages(db, campaign, account, status, 7)
    report = await run_retention(db, KEEP)
    assert {t.table: t.rows for t in report.tables}["send_attempts"] == 7 * len(FINAL)
    expected = {(status, False): 7 for status in STATES} | {
        (status, True): 7 for status in STATES if status not in FINAL
    }
    assert await attempts_by_status(db) == expected


async def test_attempts_of_deleted_messages_are_pruned(db: Conn) -> None:
    campaign, account = await make_campaign(db)
    await add_messages(db, campaign, account, "failed", 3)
    await db.execute("DELETE FROM messages")
    await run_retention(db, KEEP)
    assert await db.fetchval("SELECT count(*) FROM send_attempts") == 3


async def test_every_batch_deletes_at_most_batch_size_rows(db: Conn) -> None:
    campaign, account = await make_campaign(db)
    await add_messages(db, campaign, account, "sent", 95)
    # What each deleting transaction removed, as the database saw it.
    await db.execute(
        """
        CREATE TABLE retention_test_batches (xid xid8, n bigint);
        CREATE FUNCTION retention_test_count() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO retention_test_batches SELECT pg_current_xact_id(), count(*) FROM gone;
            RETURN NULL;
        END $$;
        CREATE TRIGGER retention_test_count AFTER DELETE ON send_attempts
            REFERENCING OLD TABLE AS gone
            FOR EACH STATEMENT EXECUTE FUNCTION retention_test_count();
        """
    )
    try:
        report = await run_retention(db, KEEP)
        batches = await db.fetch(
            "SELECT xid, sum(n) AS n FROM retention_test_batches GROUP BY xid HAVING sum(n) > 0"
        )
    finally:
        await db.execute(
            "DROP TRIGGER retention_test_count ON send_attempts; "
            "DROP FUNCTION retention_test_count(); DROP TABLE retention_test_batches"
        )
    assert sorted(r["n"] for r in batches) == [5, *[10] * 9]
    attempts = {t.table: t for t in report.tables}["send_attempts"]
    assert (attempts.rows, attempts.batches) == (95, 10)


async def test_only_expired_idempotency_keys_and_old_published_reports_go(db: Conn) -> None:
    _, account = await make_campaign(db)
    await db.execute(
        """
        INSERT INTO idempotency_keys (key, principal, request_hash, status_code, response,
                                      created_at)
        SELECT 'k' || n, 'p', '\\x00', 200, '{}', now() - make_interval(hours => n)
        FROM generate_series(1, 48) n
        """
    )
    await db.execute(
        """
        INSERT INTO inbound_reports (account_id, folder, uidvalidity, uid, digest, kind, size,
                                     received_at, published_at)
        SELECT $1, 'INBOX', 1, n, decode(md5(n::text), 'hex'), 'bounce', 1,
               now() - make_interval(days => n), CASE WHEN n % 10 = 0 THEN NULL ELSE now() END
        FROM generate_series(1, 60) n
        """,
        account,
    )
    await run_retention(db, KEEP)
    keys = await db.fetch("SELECT key FROM idempotency_keys")
    assert sorted(int(r["key"][1:]) for r in keys) == list(range(1, 24))
    reports = await db.fetch("SELECT uid FROM inbound_reports")
    # Days 1-29 stay; of the older ones only those still to be published (every tenth).
    assert sorted(r["uid"] for r in reports) == [*range(1, 30), 30, 40, 50, 60]


async def test_only_finished_webhook_deliveries_past_the_cutoff_go_with_their_attempts(
    db: Conn,
) -> None:
    owner = await db.fetchval(
        "INSERT INTO users (email, password_hash, role) VALUES ('w@example.com', 'x', 'operator') "
        "RETURNING id"
    )
    endpoint = await db.fetchval(
        "INSERT INTO webhook_endpoints (owner_id, url, event_types) "
        "VALUES ($1, 'https://hooks.example.com/in', '{message.sent}') RETURNING id",
        owner,
    )
    # Per status, one delivery a day for 60 days, each with two attempts.
    await db.execute(
        """
        WITH d AS (
            INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, occurred_at,
                                            payload, status, created_at)
            SELECT $1, n, 'message.sent', now(), '{}', s, now() - make_interval(days => n)
            FROM generate_series(1, 60) n, unnest('{delivered,failed,pending}'::text[]) s
            RETURNING id
        )
        INSERT INTO webhook_attempts (delivery_id, endpoint_id, attempt, attempted_at, latency_ms)
        SELECT d.id, $1, a, now(), 1 FROM d, generate_series(1, 2) a
        """,
        endpoint,
    )
    keep = KEEP.model_copy(update={"webhook_days": 30})
    dry = await run_retention(db, keep, dry_run=True)
    report = await run_retention(db, keep)
    pruned = {t.table: t.rows for t in report.tables}["webhook_deliveries"]
    # Days 30 to 60 are past the cut-off (a day's row was written a moment before the run).
    assert pruned == {t.table: t.rows for t in dry.tables}["webhook_deliveries"] == 2 * 31
    rows = await db.fetch(
        "SELECT status, created_at < now() - interval '30 days' AS old, count(*) AS n "
        "FROM webhook_deliveries GROUP BY 1, 2"
    )
    assert {(r["status"], r["old"]): r["n"] for r in rows} == {
        ("delivered", False): 29, ("failed", False): 29, ("pending", False): 29,
        ("pending", True): 31,
    }  # fmt: skip
    orphans = await db.fetchval(
        "SELECT count(*) FROM webhook_attempts a "
        "WHERE NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.id = a.delivery_id)"
    )
    assert orphans == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_attempts") == 2 * (3 * 29 + 31)


async def snapshot(db: Conn) -> dict[str, Any]:
    return {
        table: await db.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
        for table in ("events", "events_default", "send_attempts", "idempotency_keys")
    } | {
        "partitions": await db.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname ~ '^events_[0-9]{4}_[0-9]{2}$'"
        )
    }


async def test_dry_run_counts_what_a_run_deletes_and_changes_nothing(db: Conn) -> None:
    campaign, account = await make_campaign(db)
    for status in ("sent", "sending"):
        await add_messages(db, campaign, account, status, 12)
    old = await month_partition(db, 20)
    await db.execute(
        "INSERT INTO idempotency_keys (key, principal, request_hash, status_code, response, "
        "created_at) VALUES ('a', 'p', '\\x00', 200, '{}', now() - interval '2 days')"
    )
    before = await snapshot(db)
    dry = await run_retention(db, KEEP, dry_run=True)
    assert await snapshot(db) == before
    assert dry.dropped_partitions == [old]
    real = await run_retention(db, KEEP)
    assert real.dropped_partitions == dry.dropped_partitions
    assert {t.table: t.rows for t in real.tables} == {t.table: t.rows for t in dry.tables}
    assert {t.table: t.rows for t in dry.tables}["send_attempts"] == 12


async def test_concurrent_runs_delete_each_row_once(db: Conn, database_dsn: str) -> None:
    campaign, account = await make_campaign(db)
    await add_messages(db, campaign, account, "sent", 200)
    names = [await month_partition(db, ago) for ago in (30, 29)]
    conns = [await asyncpg.connect(database_dsn) for _ in range(3)]
    try:
        reports = await asyncio.gather(*(run_retention(c, KEEP) for c in conns))
    finally:
        for conn in conns:
            await conn.close()
    assert sum(sum(t.rows for t in r.tables if t.table == "send_attempts") for r in reports) == 200
    assert sorted(n for r in reports for n in r.dropped_partitions) == sorted(names)
    assert await existing_tables(db, names) == set()
    assert await db.fetchval("SELECT count(*) FROM send_attempts") == 200


async def test_the_cli_dry_run_reports_and_the_run_prunes(db: Conn, database_dsn: str) -> None:
    campaign, account = await make_campaign(db)
    await add_messages(db, campaign, account, "sent", 3)
    env = {
        "MAILFLEET_POSTGRES__DSN": database_dsn,
        "MAILFLEET_RETENTION__ATTEMPTS_DAYS": "30",
        "MAILFLEET_RETENTION__BATCH_SIZE": "2",
    }
    runner = CliRunner()
    dry = await asyncio.to_thread(runner.invoke, app, ["retention", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "send_attempts: would delete 3 rows" in dry.output
    assert await db.fetchval("SELECT count(*) FROM send_attempts") == 6
    run = await asyncio.to_thread(runner.invoke, app, ["retention"], env=env)
    assert run.exit_code == 0, run.output
    assert "send_attempts: deleted 3 rows in 2 batches" in run.output
    assert await db.fetchval("SELECT count(*) FROM send_attempts") == 3
