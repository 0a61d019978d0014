"""Retention: drop old monthly `events` partitions, prune other old rows in small batches.

Every statement is its own short transaction and waits for a lock at most `lock_timeout_ms`,
so writers are never held up for long; a run that is interrupted leaves nothing half done
that the next run does not finish, and runs side by side do each row once.
"""

import asyncio
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from mailfleet_common.db import EVENTS_PARTITION_LOCK, Conn

from mailfleet_api.settings import RetentionSettings

# Monthly partitions, as ensure_events_partition() names them.
_PARTITION_NAME = re.compile(r"^events_(\d{4})_(\d{2})$")
# A message in one of these states never changes again; its attempts are history only.
FINAL_STATES = ("sent", "failed", "cancelled")
# Tries of a partition detach that cannot get its lock within lock_timeout_ms.
_DETACH_TRIES = 5


@dataclass
class TableReport:
    """What was (or, in a dry run, would be) deleted from one table."""

    table: str
    rows: int = 0
    batches: int = 0
    max_batch_s: float = 0.0
    # Time spent in its batches, all together.
    seconds: float = 0.0


@dataclass
class RetentionReport:
    """The outcome of one run: partitions dropped or left busy, rows pruned per table."""

    dry_run: bool
    events_before: datetime
    dropped_partitions: list[str] = field(default_factory=list)
    busy_partitions: list[str] = field(default_factory=list)
    # The longest detach-and-drop of one partition, tries included.
    max_partition_s: float = 0.0
    tables: list[TableReport] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "events_before": self.events_before.isoformat(),
            "dropped_partitions": self.dropped_partitions,
            "busy_partitions": self.busy_partitions,
            "max_partition_s": self.max_partition_s,
            "tables": {
                t.table: {"rows": t.rows, "batches": t.batches, "max_batch_s": t.max_batch_s}
                for t in self.tables
            },
        }


@dataclass(frozen=True)
class Cutoffs:
    """Rows older than these go."""

    events: datetime
    reports: datetime
    attempts: datetime
    idempotency_keys: datetime
    webhook_deliveries: datetime


async def cutoffs(conn: Conn, settings: RetentionSettings, now: datetime | None) -> Cutoffs:
    """The cut-offs of `settings` as of `now` (default: the database's clock)."""
    (row,) = await conn.fetch(
        """
        SELECT t - make_interval(months => $2) AS events,
               t - make_interval(days => $3) AS reports,
               t - make_interval(days => $4) AS attempts,
               t - make_interval(hours => $5) AS idempotency_keys,
               t - make_interval(days => $6) AS webhook_deliveries
        FROM (SELECT coalesce($1::timestamptz, now()) AS t) clock
        """,
        now,
        settings.events_months,
        settings.reports_days,
        settings.attempts_days,
        settings.idempotency_key_hours,
        settings.webhook_days,
    )
    return Cutoffs(**dict(row))


def partition_end(name: str) -> datetime | None:
    """Where the monthly partition `name` ends (UTC), or None if it is not one."""
    match = _PARTITION_NAME.match(name)
    if match is None:
        return None
    year, month = int(match[1]), int(match[2])
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


async def old_partitions(conn: Conn, before: datetime) -> list[str]:
    """Monthly events partitions wholly before `before`, oldest first.

    Detached ones are included: a run interrupted between detach and drop left them behind.
    """
    names = await conn.fetch(
        """
        SELECT c.relname FROM pg_class c
        WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace
          AND c.relname ~ '^events_[0-9]{4}_[0-9]{2}$'
          AND (NOT c.relispartition
               OR EXISTS (SELECT 1 FROM pg_inherits i
                          WHERE i.inhrelid = c.oid AND i.inhparent = 'events'::regclass))
        ORDER BY c.relname
        """
    )
    return [
        r["relname"]
        for r in names
        if (end := partition_end(r["relname"])) is not None and end <= before
    ]


async def _set_lock_timeout(conn: Conn, settings: RetentionSettings) -> None:
    await conn.execute(f"SET lock_timeout = {int(settings.lock_timeout_ms)}")


async def drop_partition(conn: Conn, name: str) -> bool | None:
    """Detach the partition `name` from events and drop it.

    Returns True if this call dropped it, None if it was gone already (another run), False if
    a lock could not be had within the lock timeout. Two transactions, so `events` is locked
    only for the detach (an instant, but a whole-table lock: a default partition rules out
    DETACH CONCURRENTLY), and the drop needs only the detached table.
    """
    quoted = await conn.fetchval("SELECT quote_ident($1)", name)
    try:
        async with conn.transaction():
            # The dispatcher's partition upkeep and other retention runs take the same lock.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_PARTITION_LOCK)
            attached = await conn.fetchval(
                """
                SELECT EXISTS (SELECT 1 FROM pg_inherits
                               WHERE inhrelid = to_regclass($1) AND inhparent = 'events'::regclass)
                """,
                quoted,
            )
            if attached:
                await conn.execute(f"ALTER TABLE events DETACH PARTITION {quoted}")
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENTS_PARTITION_LOCK)
            if await conn.fetchval("SELECT to_regclass($1)", quoted) is None:
                return None
            await conn.execute(f"DROP TABLE {quoted}")
    except asyncpg.LockNotAvailableError:
        return False
    except asyncpg.UndefinedTableError:
        # Dropped by another run after this one looked (an advisory lock does not refresh
        # the catalog this session has cached).
        return None
    return True


# Each statement deletes at most $2 rows older than $1, taken oldest first from the index
# migration 0015 made (events: the primary key). Those that leave some rows (still needed)
# walk on from the cursor ($3, $4), so no batch reads them again.
# Every row a batch takes goes, so a short batch is the last; locked rows are left to the
# next run.
_PRUNE_EVENTS_DEFAULT = """
    WITH gone AS (
        DELETE FROM events_default WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM events_default WHERE occurred_at < $1
            ORDER BY occurred_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
        )) RETURNING 1
    )
    SELECT count(*) AS scanned, count(*) AS deleted FROM gone
"""
_PRUNE_IDEMPOTENCY_KEYS = """
    WITH gone AS (
        DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM idempotency_keys WHERE created_at < $1
            ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
        )) RETURNING 1
    )
    SELECT count(*) AS scanned, count(*) AS deleted FROM gone
"""


def _walking_prune(table: str, at: str, kept: str, kept_column: str) -> str:
    """A prune statement that walks `table` by (`at`, id), keeping the rows `kept` names.

    `kept` is a condition on the batch's `b.<kept_column>`; the cursor walks past kept rows.
    """
    return f"""
    WITH batch AS (
        SELECT id, {at}, {kept_column} FROM {table}
        WHERE {at} < $1 AND ({at}, id) > ($3, $4)
        ORDER BY {at}, id LIMIT $2
    ), gone AS (
        DELETE FROM {table} t USING batch b
        WHERE t.id = b.id AND NOT ({kept}) RETURNING 1
    ), last AS (
        SELECT {at}, id FROM batch ORDER BY {at} DESC, id DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM batch) AS scanned, (SELECT count(*) FROM gone) AS deleted,
           (SELECT {at} FROM last) AS last_at, (SELECT id FROM last) AS last_id
    """  # noqa: S608 - constants only


# Reports still in the bouncer's outbox (not yet published) stay.
_PRUNE_INBOUND_REPORTS = _walking_prune(
    "inbound_reports", "received_at", "b.published_at IS NULL", "published_at"
)
# An attempt goes once its message is final (or was deleted): a message still in flight, or
# uncertain, keeps its whole history.
_PRUNE_SEND_ATTEMPTS = """
    WITH batch AS (
        SELECT id, message_id, attempted_at FROM send_attempts
        WHERE attempted_at < $1 AND (attempted_at, id) > ($3, $4)
        ORDER BY attempted_at, id LIMIT $2
    ), gone AS (
        DELETE FROM send_attempts s USING batch b
        WHERE s.id = b.id
          AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = b.message_id
                          AND m.status <> ALL ($5::text[]))
        RETURNING 1
    ), last AS (
        SELECT attempted_at, id FROM batch ORDER BY attempted_at DESC, id DESC LIMIT 1
    )
    SELECT (SELECT count(*) FROM batch) AS scanned, (SELECT count(*) FROM gone) AS deleted,
           (SELECT attempted_at FROM last) AS last_at, (SELECT id FROM last) AS last_id
"""
# Deliveries still pending (due again, or leased by a worker) stay; their attempts go with
# the delivered and failed ones (ON DELETE CASCADE).
_PRUNE_WEBHOOK_DELIVERIES = _walking_prune(
    "webhook_deliveries", "created_at", "b.status = 'pending'", "status"
)

_COUNT_EVENTS_DEFAULT = "SELECT count(*) FROM events_default WHERE occurred_at < $1"
_COUNT_IDEMPOTENCY_KEYS = "SELECT count(*) FROM idempotency_keys WHERE created_at < $1"
_COUNT_INBOUND_REPORTS = """
    SELECT count(*) FROM inbound_reports WHERE received_at < $1 AND published_at IS NOT NULL
"""
_COUNT_WEBHOOK_DELIVERIES = """
    SELECT count(*) FROM webhook_deliveries WHERE created_at < $1 AND status <> 'pending'
"""
_COUNT_SEND_ATTEMPTS = """
    SELECT count(*) FROM send_attempts s
    WHERE s.attempted_at < $1
      AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = s.message_id
                      AND m.status <> ALL ($2::text[]))
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def prune(
    conn: Conn,
    table: str,
    statement: str,
    before: datetime,
    batch_size: int,
    *extra: Any,
    walks: bool = False,
) -> TableReport:
    """Run a prune statement batch after batch until a batch comes back short.

    A statement that `walks` takes the cursor ($3, $4) after its first two parameters.
    """
    report = TableReport(table)
    last_at, last_id = _EPOCH, 0
    while True:
        started = time.perf_counter()
        args = (before, batch_size, last_at, last_id, *extra) if walks else (before, batch_size)
        try:
            (row,) = await conn.fetch(statement, *args)
        except asyncpg.LockNotAvailableError:
            # Rows another transaction holds: let it finish, then take the batch again.
            await asyncio.sleep(0.1)
            continue
        took = time.perf_counter() - started
        report.max_batch_s = max(report.max_batch_s, took)
        report.seconds += took
        report.batches += 1
        report.rows += row["deleted"]
        if row["scanned"] < batch_size:
            return report
        if walks:
            last_at, last_id = row["last_at"], row["last_id"]


async def run_retention(
    conn: Conn, settings: RetentionSettings, *, dry_run: bool = False, now: datetime | None = None
) -> RetentionReport:
    """Apply the retention settings once; with `dry_run`, only count what would go."""
    cut = await cutoffs(conn, settings, now)
    report = RetentionReport(dry_run=dry_run, events_before=cut.events)
    await _set_lock_timeout(conn, settings)
    partitions = await old_partitions(conn, cut.events)
    final = list(FINAL_STATES)
    if dry_run:
        report.dropped_partitions = partitions
        for table, statement, before, extra in (
            ("events_default", _COUNT_EVENTS_DEFAULT, cut.events, ()),
            ("inbound_reports", _COUNT_INBOUND_REPORTS, cut.reports, ()),
            ("send_attempts", _COUNT_SEND_ATTEMPTS, cut.attempts, (final,)),
            ("idempotency_keys", _COUNT_IDEMPOTENCY_KEYS, cut.idempotency_keys, ()),
            ("webhook_deliveries", _COUNT_WEBHOOK_DELIVERIES, cut.webhook_deliveries, ()),
        ):
            report.tables.append(TableReport(table, await conn.fetchval(statement, before, *extra)))
        return report
    for name in partitions:
        started = time.perf_counter()
        for attempt in range(_DETACH_TRIES):
            dropped = await drop_partition(conn, name)
            if dropped is not False:
                if dropped:
                    report.dropped_partitions.append(name)
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        else:
            report.busy_partitions.append(name)
        report.max_partition_s = max(report.max_partition_s, time.perf_counter() - started)
    size = settings.batch_size
    report.tables = [
        await prune(conn, "events_default", _PRUNE_EVENTS_DEFAULT, cut.events, size),
        await prune(conn, "inbound_reports", _PRUNE_INBOUND_REPORTS, cut.reports, size, walks=True),
        await prune(
            conn, "send_attempts", _PRUNE_SEND_ATTEMPTS, cut.attempts, size, final, walks=True
        ),
        await prune(conn, "idempotency_keys", _PRUNE_IDEMPOTENCY_KEYS, cut.idempotency_keys, size),
        await prune(
            conn,
            "webhook_deliveries",
            _PRUNE_WEBHOOK_DELIVERIES,
            cut.webhook_deliveries,
            size,
            walks=True,
        ),
    ]
    return report
