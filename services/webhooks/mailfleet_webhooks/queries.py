"""Every SQL statement the webhook worker runs: claiming deliveries and recording attempts."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from mailfleet_common.db import Conn as Connection

Conn: TypeAlias = "Connection | PoolConnectionProxy[asyncpg.Record]"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery leased to this worker, with what posting it needs."""

    id: int
    endpoint_id: UUID
    event_id: int
    attempt: int  # the number of the attempt about to be made (1 for the first)
    body: str  # the payload exactly as it is signed and sent
    url: str
    secret_enc: bytes
    endpoint_version: datetime  # the endpoint's updated_at: a changed secret or URL


@dataclass(frozen=True, slots=True)
class AttemptResult:
    delivery_id: int
    endpoint_id: UUID
    attempt: int
    attempted_at: datetime
    status_code: int | None
    latency_ms: float
    response: str | None
    error: str | None
    delivered: bool
    retry_at: datetime | None  # None when this failure was the last try


@dataclass(frozen=True, slots=True)
class EndpointTally:
    """What a batch of results says about one endpoint's run of failures."""

    endpoint_id: UUID
    succeeded: bool  # some attempt in the batch succeeded: the run restarts after it
    failures: int  # failures after the last success (all of them without one)
    first_failure_at: datetime | None  # the first of those failures


@dataclass(frozen=True, slots=True)
class Disabled:
    endpoint_id: UUID
    url: str
    reason: str


async def claim_due(
    conn: Conn, limit: int, lease_s: float, room: Mapping[UUID, int], per_endpoint: int
) -> list[Claimed]:
    """Lease up to `limit` due deliveries of enabled endpoints, oldest due first.

    At most `room[endpoint]` (`per_endpoint` for endpoints not in `room`) of one endpoint's:
    what this worker takes it can post at once. Rows another worker holds are skipped, not
    waited for; the lease moves next_attempt_at past it, so a worker that dies mid-request
    leaves them due again when it expires.
    """
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT d.id FROM webhook_endpoints e
            LEFT JOIN unnest($3::uuid[], $4::int[]) AS busy (endpoint_id, room)
                ON busy.endpoint_id = e.id
            CROSS JOIN LATERAL (
                SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
                WHERE d.endpoint_id = e.id AND d.status = 'pending'
                  AND d.next_attempt_at <= now()
                ORDER BY d.next_attempt_at
                LIMIT coalesce(busy.room, $5)
                FOR UPDATE SKIP LOCKED
            ) d
            WHERE e.enabled AND e.secret_enc IS NOT NULL
            ORDER BY d.next_attempt_at
            LIMIT $1
        )
        UPDATE webhook_deliveries d
        SET next_attempt_at = now() + make_interval(secs => $2)
        FROM due, webhook_endpoints e
        WHERE d.id = due.id AND e.id = d.endpoint_id
        RETURNING d.id, d.endpoint_id, d.event_id, d.attempts + 1 AS attempt,
                  d.payload::text AS body, e.url, e.secret_enc, e.updated_at
        """,
        limit,
        lease_s,
        list(room),
        list(room.values()),
        per_endpoint,
    )
    return [
        Claimed(
            r["id"],
            r["endpoint_id"],
            r["event_id"],
            r["attempt"],
            r["body"],
            r["url"],
            bytes(r["secret_enc"]),
            r["updated_at"],
        )
        for r in rows
    ]


async def record_results(conn: Conn, results: Sequence[AttemptResult]) -> int:
    """Log each attempt and move its delivery on (delivered, retry later, or failed).

    A result for a delivery whose attempt was meanwhile recorded by another worker (this
    one's lease ran out and the delivery was claimed again) changes nothing. Returns how many
    deliveries were given up.
    """
    ordered = sorted(results, key=lambda r: r.delivery_id)  # one lock order for every worker
    given_up = await conn.fetchval(
        """
        WITH input AS (
            SELECT * FROM unnest(
                $1::bigint[], $2::uuid[], $3::int[], $4::timestamptz[], $5::int[],
                $6::float8[], $7::text[], $8::text[], $9::boolean[], $10::timestamptz[]
            ) AS t (delivery_id, endpoint_id, attempt, attempted_at, status_code, latency_ms,
                    response, error, delivered, retry_at)
        ), moved AS (
            UPDATE webhook_deliveries d
            SET attempts = i.attempt,
                status = CASE WHEN i.delivered THEN 'delivered'
                              WHEN i.retry_at IS NULL THEN 'failed' ELSE 'pending' END,
                next_attempt_at = coalesce(i.retry_at, d.next_attempt_at),
                last_status_code = i.status_code,
                last_error = i.error,
                delivered_at = CASE WHEN i.delivered THEN i.attempted_at END
            FROM input i
            WHERE d.id = i.delivery_id AND d.status = 'pending' AND d.attempts = i.attempt - 1
            RETURNING d.id, d.status
        ), logged AS (
            INSERT INTO webhook_attempts (delivery_id, endpoint_id, attempt, attempted_at,
                                          status_code, latency_ms, response, error)
            SELECT i.delivery_id, i.endpoint_id, i.attempt, i.attempted_at, i.status_code,
                   i.latency_ms, i.response, i.error
            FROM input i JOIN moved ON moved.id = i.delivery_id
        )
        SELECT count(*) FILTER (WHERE status = 'failed') FROM moved
        """,
        [r.delivery_id for r in ordered],
        [r.endpoint_id for r in ordered],
        [r.attempt for r in ordered],
        [r.attempted_at for r in ordered],
        [r.status_code for r in ordered],
        [r.latency_ms for r in ordered],
        [r.response for r in ordered],
        [r.error for r in ordered],
        [r.delivered for r in ordered],
        [r.retry_at for r in ordered],
    )
    return int(given_up or 0)


async def tally_endpoints(conn: Conn, tallies: Sequence[EndpointTally]) -> None:
    """Carry each endpoint's run of failures on (a success restarts it)."""
    ordered = sorted(tallies, key=lambda t: t.endpoint_id)  # one lock order for every worker
    await conn.execute(
        """
        UPDATE webhook_endpoints e
        SET consecutive_failures = CASE WHEN i.succeeded THEN i.failures
                                        ELSE e.consecutive_failures + i.failures END,
            failing_since = CASE WHEN i.failures = 0 THEN NULL
                                 WHEN i.succeeded OR e.failing_since IS NULL
                                     THEN i.first_failure_at
                                 ELSE e.failing_since END
        FROM unnest($1::uuid[], $2::boolean[], $3::int[], $4::timestamptz[])
            AS i (endpoint_id, succeeded, failures, first_failure_at)
        WHERE e.id = i.endpoint_id
        """,
        [t.endpoint_id for t in ordered],
        [t.succeeded for t in ordered],
        [t.failures for t in ordered],
        [t.first_failure_at for t in ordered],
    )


async def disable_failing(
    conn: Conn, endpoint_ids: Sequence[UUID], after_failures: int, after_s: float
) -> list[Disabled]:
    """Disable those of the endpoints failing for too long, with a reason and an event.

    The event is 'webhook-endpoint-disabled'. Pending deliveries stay, to go out once the
    endpoint is enabled again.
    """
    rows = await conn.fetch(
        """
        WITH disabled AS (
            UPDATE webhook_endpoints e
            SET enabled = false, disabled_at = now(), updated_at = now(),
                disabled_reason = format(
                    'disabled after %s consecutive failed attempts since %s',
                    consecutive_failures,
                    to_char(failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
            WHERE id = ANY ($1::uuid[]) AND enabled
              AND consecutive_failures >= $2
              AND failing_since <= now() - make_interval(secs => $3)
            RETURNING id, url, disabled_reason, disabled_at
        ), logged AS (
            INSERT INTO events (occurred_at, type, data)
            SELECT disabled_at, 'webhook-endpoint-disabled',
                   jsonb_build_object('endpoint_id', id, 'reason', disabled_reason)
            FROM disabled
        )
        SELECT id, url, disabled_reason FROM disabled
        """,
        sorted(endpoint_ids),
        after_failures,
        after_s,
    )
    return [Disabled(r["id"], r["url"], r["disabled_reason"]) for r in rows]
