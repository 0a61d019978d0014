"""Every SQL statement the dispatcher runs. The caller owns the transaction."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal, NamedTuple, TypeAlias
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from mailfleet_common.db import EVENTS_PARTITION_LOCK as PARTITION_LOCK
from mailfleet_common.db import Conn as Connection
from mailfleet_common.messages import SendAttempt, TrackingHit, TrackingKind

# mailfleet_common.db.Conn names a bare connection; a pooled one is a proxy with the same API.
Conn: TypeAlias = "Connection | PoolConnectionProxy[asyncpg.Record]"
CampaignKind: TypeAlias = Literal["campaign", "transactional"]


class AccountRoom(NamedTuple):
    """An active account below today's limit, with what it has reserved and in flight.

    A tuple rather than a dataclass: a tick may read one per account of a large fleet.
    """

    id: UUID
    min_gap_ms: int
    tags: frozenset[str]
    effective_limit: int
    reserved: int
    inflight: int


@dataclass(frozen=True)
class Campaign:
    """A running campaign with work due, and the pool it sends through.

    Its pool: the accounts it names and every account carrying one of its tags; with neither,
    every active account.
    """

    id: UUID
    account_ids: frozenset[UUID]
    tags: frozenset[str]

    @property
    def open(self) -> bool:
        return not self.account_ids and not self.tags

    def admits(self, account_id: UUID, tags: frozenset[str]) -> bool:
        return self.open or account_id in self.account_ids or not self.tags.isdisjoint(tags)


@dataclass(frozen=True)
class Candidate:
    id: int
    campaign_id: UUID


@dataclass(frozen=True)
class UncertainMessage:
    id: int
    campaign_id: UUID
    account_id: UUID | None
    sender_replica: str | None


def _account_room(row: asyncpg.Record) -> AccountRoom:
    account_id, min_gap_ms, tags, effective_limit, reserved, inflight = row
    return AccountRoom(account_id, min_gap_ms, frozenset(tags), effective_limit, reserved, inflight)


async def utc_today(conn: Conn) -> date:
    """The database's current UTC day: the day assignments reserve capacity on."""
    today: date = await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    return today


async def campaigns_with_work(conn: Conn, kind: CampaignKind = "campaign") -> list[Campaign]:
    """Running campaigns of `kind` whose start time has come and that have a message to assign.

    Each reads one slice of a partial index (messages_queued_idx, or the due part of
    messages_deferred_campaign_idx), so an idle fleet costs a few index probes, not a look at
    every account. Transactional streams are assigned by their own lane, ahead of campaigns.

    Run in the caller's transaction, with sequential scans off for this statement alone: the
    planner estimates `m.campaign_id = c.id` from the table's statistics, and where one big
    campaign makes up most of the table it expects a row at once and reads the table in order
    instead of probing the index, that is the whole backlog for a small campaign or a
    transactional stream (tens of milliseconds at 100,000 messages, on every tick).
    """
    await conn.execute("SET LOCAL enable_seqscan = off")
    rows = await conn.fetch(
        """
        SELECT c.id, c.account_ids, c.pool_tags FROM campaigns c
        WHERE c.status = 'running' AND c.kind = $1
          AND (c.start_at IS NULL OR c.start_at <= now())
          AND (EXISTS (SELECT 1 FROM messages m
                       WHERE m.campaign_id = c.id AND m.status = 'queued')
               OR EXISTS (SELECT 1 FROM messages m
                          WHERE m.campaign_id = c.id AND m.status = 'deferred'
                            AND m.next_attempt_at <= now()))
        """,
        kind,
    )
    await conn.execute("RESET enable_seqscan")
    return [Campaign(r["id"], frozenset(r["account_ids"]), frozenset(r["pool_tags"])) for r in rows]


async def accounts_with_room(
    conn: Conn,
    day: date,
    campaigns: Sequence[Campaign],
    pace: tuple[float, int, int],
    seconds_left: float,
    per_campaign: int,
    pivot: UUID,
) -> list[AccountRoom]:
    """The active accounts that could take a message of `campaigns` now, the roomiest first.

    Could take one: in the campaign's pool, below `day`'s limit, and with less in flight than
    their pace's look-ahead plus a headroom (`pace` is lookahead_s, max_inflight and the
    headroom, 0 for campaigns; the test is assignment.lookahead()'s), so a fleet that is busy
    sending returns few rows. Of each
    campaign's, only the `per_campaign` with the most capacity left (assignment.capacity(),
    with `seconds_left` of the day): a tick hands out at most that many messages, each to the
    member furthest below its share, and no member beyond the roomiest that many can be
    reached before each of them has one. So a tick over a large fleet reads a bounded number
    of rows. Among accounts of equal capacity, those from `pivot` on (by id, wrapping round)
    come first: a new pivot each tick rotates which of them a crowded tick reaches.

    Read without locks: the caller locks the accounts it picks and reads their loads again.
    In-flight counts come from one pass over the in-flight index (messages_inflight_idx),
    whose size follows what is in flight, not the fleet's size.
    """
    every = any(c.open for c in campaigns)
    named = sorted({a for c in campaigns for a in c.account_ids})
    tags = sorted({t for c in campaigns for t in c.tags})
    lookahead_s, max_inflight, headroom = pace
    rows = await conn.fetch(
        """
        WITH room AS (
            SELECT a.id, a.min_gap_ms, a.tags, account_effective_limit(a, $1) AS effective_limit,
                   coalesce(u.reserved, 0) AS reserved, coalesce(f.n, 0) AS inflight
            FROM accounts a
            LEFT JOIN account_daily_usage u ON u.account_id = a.id AND u.day = $1
            LEFT JOIN (SELECT account_id, count(*) AS n FROM messages
                       WHERE status IN ('assigned', 'sending') GROUP BY account_id) f
                   ON f.account_id = a.id
            WHERE a.status = 'active' AND NOT account_held(a)
              AND ($2 OR a.id = ANY($3::uuid[]) OR a.tags && $4::text[])
              AND account_effective_limit(a, $1) > coalesce(u.reserved, 0)
              AND coalesce(f.n, 0) < $11::int + CASE
                  WHEN a.min_gap_ms <= 0 THEN $6::int
                  ELSE least($6, greatest(1, ceil($5::float8 * 1000 / a.min_gap_ms)))::int
              END
        ), weighed AS MATERIALIZED (
            SELECT r.*, least(
                       (r.effective_limit - r.reserved)::bigint,
                       CASE WHEN r.min_gap_ms > 0
                            THEN greatest(1, floor($7::float8 * 1000 / r.min_gap_ms))::bigint
                       END) AS weight
            FROM room r
        )
        SELECT DISTINCT ON (w.id) w.id, w.min_gap_ms, w.tags, w.effective_limit, w.reserved,
                                  w.inflight
        FROM campaigns c CROSS JOIN LATERAL (
            SELECT * FROM weighed w
            WHERE (cardinality(c.account_ids) = 0 AND cardinality(c.pool_tags) = 0)
               OR w.id = ANY(c.account_ids) OR w.tags && c.pool_tags
            ORDER BY w.weight DESC, w.id < $10, w.id
            LIMIT $9
        ) w
        WHERE c.id = ANY($8::uuid[])
        ORDER BY w.id
        """,
        day,
        every,
        named,
        tags,
        lookahead_s,
        max_inflight,
        seconds_left,
        [c.id for c in campaigns],
        per_campaign,
        pivot,
        headroom,
    )
    return [_account_room(r) for r in rows]


_LOCK_ACCOUNTS_SKIPPING = """
SELECT a.id FROM accounts a
WHERE a.id = ANY($1::uuid[]) AND a.status = 'active' AND NOT account_held(a)
ORDER BY a.id
FOR NO KEY UPDATE SKIP LOCKED
"""
_LOCK_ACCOUNTS_WAITING = _LOCK_ACCOUNTS_SKIPPING.replace(" SKIP LOCKED", "")


async def lock_accounts(
    conn: Conn, account_ids: Sequence[UUID], day: date, wait: bool = False
) -> list[AccountRoom]:
    """Lock those of the accounts that are active and that no other dispatcher holds.

    With `wait`, the transactional lane's: wait for the campaign lane's tick holding an
    account to commit rather than skip it, a wait of milliseconds.

    Returns them with their loads read after the locks were taken (a statement of its own,
    whose snapshot includes whatever the previous holder of each lock committed), so what is
    reserved against them now is exact.

    FOR NO KEY UPDATE rather than FOR UPDATE: it excludes other dispatchers just the same but
    does not block the FOR KEY SHARE locks that foreign-key checks take (usage rows, messages).
    """
    locked = await conn.fetch(
        _LOCK_ACCOUNTS_WAITING if wait else _LOCK_ACCOUNTS_SKIPPING, list(account_ids)
    )
    rows = await conn.fetch(
        """
        SELECT a.id, a.min_gap_ms, a.tags, account_effective_limit(a, $2) AS effective_limit,
               coalesce(u.reserved, 0) AS reserved,
               (SELECT count(*) FROM messages m
                WHERE m.account_id = a.id AND m.status IN ('assigned', 'sending')) AS inflight
        FROM accounts a
        LEFT JOIN account_daily_usage u ON u.account_id = a.id AND u.day = $2
        WHERE a.id = ANY($1::uuid[]) AND a.status = 'active'
        ORDER BY a.id
        """,
        [r["id"] for r in locked],
        day,
    )
    return [_account_room(r) for r in rows]


async def lock_candidates(
    conn: Conn, campaign_ids: Sequence[UUID], demands: Sequence[int]
) -> list[Candidate]:
    """Lock up to `demand` assignable messages of each campaign, oldest first.

    Assignable: queued, or deferred with its retry due. Each campaign reads its own slice of a
    partial index (messages_queued_idx, messages_deferred_campaign_idx), so the cost follows
    the demand, not the size of the table. Rows another dispatcher holds are skipped.
    """
    rows = await conn.fetch(
        """
        WITH wanted AS (
            SELECT c.id, w.demand
            FROM unnest($1::uuid[], $2::int[]) AS w (campaign_id, demand)
            JOIN campaigns c ON c.id = w.campaign_id
            WHERE c.status = 'running' AND w.demand > 0
        ), candidates AS (
            SELECT q.id FROM wanted w CROSS JOIN LATERAL (
                SELECT m.id FROM messages m
                WHERE m.campaign_id = w.id AND m.status = 'queued'
                ORDER BY m.id LIMIT w.demand
            ) q
            UNION ALL
            SELECT d.id FROM wanted w CROSS JOIN LATERAL (
                SELECT m.id FROM messages m
                WHERE m.campaign_id = w.id AND m.status = 'deferred'
                  AND m.next_attempt_at <= now()
                ORDER BY m.next_attempt_at LIMIT w.demand
            ) d
        )
        SELECT m.id, m.campaign_id FROM messages m
        WHERE m.id IN (SELECT id FROM candidates)
          AND (m.status = 'queued' OR (m.status = 'deferred' AND m.next_attempt_at <= now()))
        ORDER BY m.id
        FOR NO KEY UPDATE SKIP LOCKED
        """,
        campaign_ids,
        demands,
    )
    return [Candidate(r["id"], r["campaign_id"]) for r in rows]


async def traceparents(conn: Conn, message_ids: Sequence[int]) -> dict[int, str]:
    """The stored trace context of those of the messages that have one (tracing on)."""
    rows = await conn.fetch(
        """
        SELECT id, traceparent FROM messages
        WHERE id = ANY($1::bigint[]) AND traceparent IS NOT NULL
        """,
        message_ids,
    )
    return {r["id"]: r["traceparent"] for r in rows}


async def still_assigned(conn: Conn, message_ids: Sequence[int]) -> list[tuple[int, UUID]]:
    """Those of the messages still assigned and not yet claimed, with their account."""
    rows = await conn.fetch(
        """
        SELECT id, account_id FROM messages
        WHERE id = ANY($1::bigint[]) AND status = 'assigned'
        ORDER BY id
        """,
        message_ids,
    )
    return [(r["id"], r["account_id"]) for r in rows]


async def assign_and_reserve(
    conn: Conn, message_ids: Sequence[int], account_ids: Sequence[UUID], day: date
) -> int:
    """Mark locked messages assigned to their accounts and reserve one unit of `day` each.

    The reservation counts the rows actually updated, so reserved always equals assigned.
    Usage rows are written in account order, as every other writer does, to avoid deadlocks.
    """
    value = await conn.fetchval(
        """
        WITH assigned AS (
            UPDATE messages m
            SET status = 'assigned', account_id = t.account_id, assigned_at = now(),
                updated_at = now()
            FROM unnest($1::bigint[], $2::uuid[]) AS t (id, account_id)
            WHERE m.id = t.id AND m.status IN ('queued', 'deferred')
            RETURNING m.account_id
        ), reserved AS (
            INSERT INTO account_daily_usage AS u (account_id, day, reserved)
            SELECT account_id, $3, count(*) FROM assigned GROUP BY account_id ORDER BY account_id
            ON CONFLICT (account_id, day) DO UPDATE SET reserved = u.reserved + EXCLUDED.reserved
        )
        SELECT count(*) FROM assigned
        """,
        message_ids,
        account_ids,
        day,
    )
    return int(value)


async def requeue_stranded(conn: Conn, stranded_after_s: float) -> int:
    """Put back to queued what waits in `assigned` too long or for an account no longer active.

    Each unit goes back to the day it was reserved on. A late send command then finds the
    message no longer `assigned` and skips it.
    """
    value = await conn.fetchval(
        """
        WITH stale AS (
            SELECT m.id, m.account_id, (m.assigned_at AT TIME ZONE 'UTC')::date AS day
            FROM messages m
            WHERE m.status = 'assigned'
              AND (m.assigned_at < now() - make_interval(secs => $1)
                   OR NOT EXISTS (SELECT 1 FROM accounts a
                                  WHERE a.id = m.account_id AND a.status = 'active'
                                    AND NOT account_held(a)))
            FOR NO KEY UPDATE OF m SKIP LOCKED
        ), requeued AS (
            UPDATE messages m
            SET status = 'queued', account_id = NULL, assigned_at = NULL, updated_at = now()
            FROM stale WHERE m.id = stale.id
            RETURNING stale.account_id, stale.day
        ), unreserved AS (
            SELECT release_reservations(array_agg(account_id), array_agg(day), array_agg(1))
            FROM requeued
        )
        -- Selecting from `unreserved` (one row) makes it run.
        SELECT (SELECT count(*) FROM requeued) FROM unreserved
        """,
        stranded_after_s,
    )
    return int(value)


async def release_cancelled(conn: Conn) -> int:
    """Give back the units of messages cancelled while `assigned` (never attempted).

    A message cancelled while assigned still carries its account_id; one cancelled after an
    attempt does not (a deferral clears it), and its unit stays spent.
    """
    value = await conn.fetchval(
        """
        WITH cancelled AS (
            SELECT m.id, m.account_id, (m.assigned_at AT TIME ZONE 'UTC')::date AS day
            FROM messages m
            WHERE m.status = 'cancelled' AND m.account_id IS NOT NULL
            FOR NO KEY UPDATE OF m SKIP LOCKED
        ), cleared AS (
            UPDATE messages m SET account_id = NULL, updated_at = now()
            FROM cancelled WHERE m.id = cancelled.id
            RETURNING cancelled.account_id, cancelled.day
        ), unreserved AS (
            SELECT release_reservations(array_agg(account_id), array_agg(day), array_agg(1))
            FROM cleared
        )
        SELECT (SELECT count(*) FROM cleared) FROM unreserved
        """
    )
    return int(value)


async def mark_orphans_uncertain(
    conn: Conn, replica_timeout_s: float, sending_timeout_s: float
) -> list[UncertainMessage]:
    """Set `uncertain` the messages in `sending` whose sender replica stopped heartbeating.

    Also those in `sending` for longer than any SMTP conversation takes, under a replica that
    is alive: a claim whose commit succeeded but whose reply was lost leaves one behind. A live
    sender that finishes late may still record `sent` over `uncertain`. Each gets an
    'uncertain' event row. They are never re-sent automatically.
    """
    rows = await conn.fetch(
        """
        WITH orphaned AS (
            SELECT m.id FROM messages m
            LEFT JOIN sender_replicas r ON r.id = m.sender_replica
            WHERE m.status = 'sending'
              AND (r.id IS NULL
                   -- Right after PostgreSQL restarted, every replica gets the timeout to
                   -- beat again (replica_live).
                   OR NOT replica_live(r, $1)
                   OR m.updated_at < now() - make_interval(secs => $2))
            FOR NO KEY UPDATE OF m SKIP LOCKED
        ), marked AS (
            UPDATE messages m SET status = 'uncertain', updated_at = now()
            FROM orphaned WHERE m.id = orphaned.id
            RETURNING m.id, m.campaign_id, m.account_id, m.sender_replica, m.attempts
        ), logged AS (
            INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data)
            SELECT now(), 'uncertain', campaign_id, id, account_id,
                   jsonb_build_object('sender_replica', sender_replica, 'attempt', attempts)
            FROM marked
        )
        SELECT id, campaign_id, account_id, sender_replica FROM marked ORDER BY id
        """,
        replica_timeout_s,
        sending_timeout_s,
    )
    return [
        UncertainMessage(r["id"], r["campaign_id"], r["account_id"], r["sender_replica"])
        for r in rows
    ]


async def lock_finished_campaigns(conn: Conn) -> list[UUID]:
    """Lock running campaigns that had messages and have none left to deliver."""
    rows = await conn.fetch(
        """
        SELECT c.id FROM campaigns c
        WHERE c.status = 'running' AND c.kind = 'campaign'
          AND EXISTS (SELECT 1 FROM messages m WHERE m.campaign_id = c.id)
          AND NOT EXISTS (
              SELECT 1 FROM messages m
              WHERE m.campaign_id = c.id
                AND m.status IN ('queued', 'assigned', 'sending', 'deferred'))
        FOR NO KEY UPDATE SKIP LOCKED
        """
    )
    return [r["id"] for r in rows]


async def complete_campaigns(conn: Conn, campaign_ids: Sequence[UUID]) -> list[UUID]:
    """Mark locked campaigns completed if, seen after taking the lock, nothing is left.

    The second look matters: an enqueue that committed while we waited for the lock is only
    visible to a statement that starts after it.
    """
    rows = await conn.fetch(
        """
        WITH completed AS (
            UPDATE campaigns c SET status = 'completed', completed_at = now(), updated_at = now()
            WHERE c.id = ANY($1::uuid[]) AND c.status = 'running'
              AND NOT EXISTS (
                  SELECT 1 FROM messages m
                  WHERE m.campaign_id = c.id
                    AND m.status IN ('queued', 'assigned', 'sending', 'deferred'))
            RETURNING c.id, c.completed_at
        ), logged AS (
            INSERT INTO events (occurred_at, type, campaign_id)
            SELECT completed_at, 'campaign-completed', id FROM completed
        )
        SELECT id FROM completed
        """,
        campaign_ids,
    )
    return [r["id"] for r in rows]


async def ensure_events_partitions(conn: Conn) -> None:
    """Create this month's and next month's events partitions (UTC) if missing."""
    # Serialized: two replicas creating the same partition at once would collide.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
    await conn.execute(
        """
        SELECT ensure_events_partition(d), ensure_events_partition((d + interval '1 month')::date)
        FROM (SELECT (now() AT TIME ZONE 'UTC')::date AS d) today
        """
    )


async def record_attempts(conn: Conn, attempts: Sequence[SendAttempt]) -> tuple[int, int]:
    """Write the attempts not yet recorded, their events and usage; returns (attempts, events).

    A redelivered batch inserts nothing: events and usage follow only the rows inserted now.
    """
    row = await conn.fetchrow(
        """
        WITH input AS (
            SELECT * FROM unnest(
                $1::bigint[], $2::uuid[], $3::uuid[], $4::int[], $5::text[], $6::int[],
                $7::text[], $8::timestamptz[]
            ) AS t (message_id, campaign_id, account_id, attempt, outcome, smtp_code, detail,
                    attempted_at)
        ), inserted AS (
            INSERT INTO send_attempts (message_id, campaign_id, account_id, attempt, outcome,
                                       smtp_code, detail, attempted_at)
            SELECT message_id, campaign_id, account_id, attempt, outcome, smtp_code, detail,
                   attempted_at
            FROM input
            ON CONFLICT (message_id, attempt) DO NOTHING
            RETURNING message_id, campaign_id, account_id, attempt, outcome, smtp_code, detail,
                      attempted_at
        ), logged AS (
            INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data)
            SELECT attempted_at, outcome, campaign_id, message_id, account_id,
                   jsonb_strip_nulls(jsonb_build_object(
                       'attempt', attempt, 'smtp_code', smtp_code, 'detail', detail))
            FROM inserted
            RETURNING 1
        ), counted AS (
            INSERT INTO account_daily_usage AS u (account_id, day, sent, failed)
            SELECT account_id, (attempted_at AT TIME ZONE 'UTC')::date,
                   count(*) FILTER (WHERE outcome = 'sent'),
                   count(*) FILTER (WHERE outcome = 'failed')
            FROM inserted
            WHERE outcome IN ('sent', 'failed')
            GROUP BY 1, 2
            ORDER BY 1, 2
            ON CONFLICT (account_id, day) DO UPDATE
            SET sent = u.sent + EXCLUDED.sent, failed = u.failed + EXCLUDED.failed
        )
        SELECT (SELECT count(*) FROM inserted) AS attempts, (SELECT count(*) FROM logged) AS events
        """,
        [a.message_id for a in attempts],
        [a.campaign_id for a in attempts],
        [a.account_id for a in attempts],
        [a.attempt for a in attempts],
        [a.outcome for a in attempts],
        [a.smtp_code for a in attempts],
        [a.detail for a in attempts],
        [a.attempted_at for a in attempts],
    )
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return int(row["attempts"]), int(row["events"])


async def record_account_paused(
    conn: Conn, account_id: UUID, reason: str, paused_at: datetime
) -> bool:
    """Write an 'account-paused' event unless this very pause is already recorded."""
    status = await conn.execute(
        """
        INSERT INTO events (occurred_at, type, account_id, data)
        SELECT $2, 'account-paused', $1, jsonb_build_object('reason', $3::text)
        WHERE NOT EXISTS (
            SELECT 1 FROM events
            WHERE account_id = $1 AND type = 'account-paused' AND occurred_at = $2)
        """,
        account_id,
        paused_at,
        reason,
    )
    return status == "INSERT 0 1"


@dataclass(frozen=True)
class TrackingOutcome:
    recorded_at: list[datetime]  # when each hit recorded now happened, by the tracker's clock
    unknown: int  # hits naming no message, dropped

    @property
    def recorded(self) -> int:
        return len(self.recorded_at)


async def record_tracking_hits(
    conn: Conn, kind: TrackingKind, hits: Sequence[TrackingHit]
) -> TrackingOutcome:
    """Write each hit as a `kind` event of its message, once; returns what became of them.

    Campaign and account come from the message row. Hits whose key is already recorded (a
    redelivered batch) insert nothing; hits naming no message are dropped.
    """
    row = await conn.fetchrow(
        """
        WITH input AS (
            SELECT * FROM unnest(
                $2::text[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[], $7::text[],
                $8::boolean[], $9::text[]
            ) AS t (event_key, message_id, occurred_at, ip, user_agent, url, machine,
                    machine_reason)
        ), inserted AS (
            INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data,
                                event_key)
            SELECT i.occurred_at, $1::text, m.campaign_id, i.message_id, m.account_id,
                   jsonb_strip_nulls(jsonb_build_object(
                       'ip', i.ip, 'user_agent', i.user_agent, 'url', i.url,
                       'machine', i.machine, 'machine_reason', i.machine_reason)),
                   i.event_key
            FROM input i JOIN messages m ON m.id = i.message_id
            ON CONFLICT (event_key, occurred_at) DO NOTHING
            RETURNING occurred_at
        )
        SELECT (SELECT coalesce(array_agg(occurred_at), '{}') FROM inserted) AS recorded_at,
               (SELECT count(*) FROM input i
                WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = i.message_id)) AS unknown
        """,
        kind,
        [h.key for h in hits],
        [h.message_id for h in hits],
        [h.occurred_at for h in hits],
        [h.ip for h in hits],
        [h.user_agent for h in hits],
        [h.url for h in hits],
        [h.machine for h in hits],
        [h.machine_reason for h in hits],
    )
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return TrackingOutcome(list(row["recorded_at"]), int(row["unknown"]))


@dataclass(frozen=True)
class InflightTick:
    """How many of an account's messages one assignment tick left `assigned` or `sending`."""

    account_id: UUID
    status: str  # assigned | sending
    assigned_at: datetime
    count: int
    min_gap_ms: int


async def inflight_ticks(conn: Conn) -> list[InflightTick]:
    """The in-flight messages of active accounts, counted per account, status and tick.

    Only assigned messages of running campaigns count: a sender skips the others, and they
    wait for the stranded sweep. Every message of one tick shares its `assigned_at`.
    """
    rows = await conn.fetch(
        """
        SELECT m.account_id, m.status, m.assigned_at, count(*) AS count, a.min_gap_ms
        FROM messages m
        JOIN accounts a ON a.id = m.account_id AND a.status = 'active' AND NOT account_held(a)
        JOIN campaigns k ON k.id = m.campaign_id
        WHERE m.status IN ('assigned', 'sending')
          AND (m.status = 'sending' OR k.status = 'running')
        GROUP BY m.account_id, m.status, m.assigned_at, a.min_gap_ms
        """
    )
    return [
        InflightTick(r["account_id"], r["status"], r["assigned_at"], r["count"], r["min_gap_ms"])
        for r in rows
    ]


async def sender_command_lag(conn: Conn, timeout_s: float) -> float:
    """The longest a live sender replica reports its send commands waited lately, in seconds."""
    lag_ms = await conn.fetchval(
        """
        SELECT coalesce(max(command_lag_ms), 0) FROM sender_replicas r
        WHERE replica_live(r, $1)
        """,
        timeout_s,
    )
    return float(lag_ms) / 1000


async def assigned_before(conn: Conn, account_id: UUID, before: datetime | None) -> list[int]:
    """The account's assigned messages of running campaigns, in the order they were commanded.

    Only those assigned before `before`, unless it is None.
    """
    rows = await conn.fetch(
        """
        SELECT m.id FROM messages m
        WHERE m.account_id = $1 AND m.status = 'assigned'
          AND ($2::timestamptz IS NULL OR m.assigned_at < $2)
          AND (SELECT k.status FROM campaigns k WHERE k.id = m.campaign_id) = 'running'
        ORDER BY m.assigned_at, m.id
        """,
        account_id,
        before,
    )
    return [r["id"] for r in rows]


# -- Fleet gauges ---------------------------------------------------------------------------

# Held, on a connection of its own, by the one replica that computes the fleet gauges.
FLEET_GAUGES_LOCK = 0x6D66_6466_6C65_6574  # "mfdfleet"


async def try_fleet_gauges_lock(conn: Conn) -> bool:
    """Take the fleet-gauge lock for this session if no other session holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", FLEET_GAUGES_LOCK))


@dataclass(frozen=True)
class Backlog:
    """Messages not yet finished, by state, and how long the oldest due one has waited."""

    queued: int
    assigned: int
    deferred: int
    sending: int
    uncertain: int
    oldest_queued_age_s: float


async def backlog(conn: Conn) -> Backlog:
    """Count each unfinished state, each from its own partial index.

    The oldest queued message is looked for among running campaigns whose start has come
    (each campaign's first entry of messages_queued_age_idx): messages of a paused or
    scheduled campaign wait on purpose.
    """
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM messages WHERE status = 'queued') AS queued,
               (SELECT count(*) FROM messages WHERE status = 'assigned') AS assigned,
               (SELECT count(*) FROM messages WHERE status = 'deferred') AS deferred,
               (SELECT count(*) FROM messages WHERE status = 'sending') AS sending,
               (SELECT count(*) FROM messages WHERE status = 'uncertain') AS uncertain,
               coalesce(extract(epoch FROM now() - (
                   SELECT min((SELECT min(m.created_at) FROM messages m
                               WHERE m.campaign_id = c.id AND m.status = 'queued'))
                   FROM campaigns c
                   WHERE c.status = 'running' AND (c.start_at IS NULL OR c.start_at <= now())
               )), 0)::float8 AS oldest_queued_age_s
        """
    )
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return Backlog(**dict(row))


class AccountDay(NamedTuple):
    """A configured account's state and its usage of `day` (one per account of the fleet)."""

    id: UUID
    status: str
    status_reason: str | None
    held: bool
    min_gap_ms: int
    tags: frozenset[str]
    effective_limit: int
    reserved: int
    sent: int


async def accounts_today(conn: Conn, day: date) -> list[AccountDay]:
    """Every account that is not archived, with its effective limit and usage of `day`."""
    rows = await conn.fetch(
        """
        SELECT a.id, a.status, a.status_reason, account_held(a) AS held, a.min_gap_ms, a.tags,
               account_effective_limit(a, $1) AS effective_limit,
               coalesce(u.reserved, 0) AS reserved, coalesce(u.sent, 0) AS sent
        FROM accounts a
        LEFT JOIN account_daily_usage u ON u.account_id = a.id AND u.day = $1
        WHERE a.status <> 'archived'
        """,
        day,
    )
    return [
        AccountDay(r[0], r[1], r[2], r[3], r[4], frozenset(r[5]), r[6], r[7], r[8]) for r in rows
    ]


async def accounts_by_status(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM accounts GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


class AccountRates(NamedTuple):
    account_id: UUID
    sends: int
    hard_bounces: int
    complaints: int


async def account_rates(conn: Conn, window_sends: int) -> list[AccountRates]:
    """Active and paused accounts' sends, hard bounces and complaints in the bouncer's window.

    account_rates() is the bouncer's own definition; only accounts with sends in it return.
    """
    rows = await conn.fetch(
        """
        SELECT a.id, r.sends, r.hard_bounces, r.complaints
        FROM accounts a CROSS JOIN LATERAL account_rates(a, $1) AS r
        WHERE a.status IN ('active', 'paused') AND r.sends > 0
        """,
        window_sends,
    )
    return [AccountRates(r[0], r[1], r[2], r[3]) for r in rows]


@dataclass(frozen=True)
class CampaignDue:
    """A running campaign, its pool and how many of its messages could be assigned now."""

    campaign: Campaign
    due: int


async def campaigns_due(conn: Conn) -> list[CampaignDue]:
    """Running campaigns whose start has come, with their queued and due deferred messages."""
    rows = await conn.fetch(
        """
        SELECT c.id, c.account_ids, c.pool_tags,
               (SELECT count(*) FROM messages m
                WHERE m.campaign_id = c.id AND m.status = 'queued')
             + (SELECT count(*) FROM messages m
                WHERE m.campaign_id = c.id AND m.status = 'deferred'
                  AND m.next_attempt_at <= now()) AS due
        FROM campaigns c
        WHERE c.status = 'running' AND (c.start_at IS NULL OR c.start_at <= now())
        """
    )
    return [
        CampaignDue(
            Campaign(r["id"], frozenset(r["account_ids"]), frozenset(r["pool_tags"])), r["due"]
        )
        for r in rows
    ]


async def fleet_counts(conn: Conn) -> tuple[int, int]:
    """Running campaigns, and suppressions in force (permanent or not yet expired)."""
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM campaigns WHERE status = 'running') AS running,
               (SELECT count(*) FROM suppressions
                WHERE expires_at IS NULL OR expires_at > now()) AS suppressions
        """
    )
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return int(row["running"]), int(row["suppressions"])


async def fold_counters(conn: Conn, max_rows: int) -> int:
    """Fold up to `max_rows` counter deltas into their buckets; how many were folded.

    0 also when another session is folding (the function's advisory lock).
    """
    folded: int = await conn.fetchval("SELECT fold_counters($1)", max_rows)
    return folded
