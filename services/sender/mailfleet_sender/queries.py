"""Every SQL statement the sender runs."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg
import asyncpg.pool
from mailfleet_common import pausing

# A plain connection or one borrowed from a pool: the caller owns the transaction.
Conn: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)


@dataclass(frozen=True, slots=True)
class AccountRow:
    """An account's delivery configuration as stored (password still encrypted)."""

    id: UUID
    status: str
    kind: str  # smtp | gmail-api
    auth_kind: str  # password | oauth2
    # Only 'smtp' accounts have a server.
    smtp_host: str | None
    smtp_port: int | None
    smtp_tls: str | None
    smtp_username: str | None
    smtp_password_enc: bytes | None
    from_email: str
    from_name: str | None
    min_gap_ms: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CampaignRow:
    id: UUID
    subject: str
    html_body: str | None
    text_body: str | None
    tracking: bool  # open pixel and click redirects; unsubscribe links go out regardless


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A message this replica now holds in `sending`, with what rendering it needs."""

    id: int
    campaign_id: UUID
    email: str
    name: str | None
    variables: dict[str, Any]
    attempts: int
    message_id: str
    # When the message was enqueued: delivery latency is measured from it.
    enqueued_at: datetime
    # The account's configuration version at claim time: a newer one than the replica holds
    # (new password, new host) is loaded before anything is sent.
    account_updated_at: datetime
    # Sent through a transactional stream: its own content (message_contents) and files.
    transactional: bool = False


@dataclass(frozen=True, slots=True)
class ContentRow:
    """A transactional message's own templates, reply address and attachments."""

    subject: str
    html_body: str | None
    text_body: str | None
    reply_to: str | None
    attachments: list[tuple[str, str, bytes]]


_ACCOUNT_SELECT = """
    SELECT id, status, kind, auth_kind, smtp_host, smtp_port, smtp_tls, smtp_username,
           smtp_password_enc, from_email, from_name, min_gap_ms, updated_at
    FROM accounts
"""


async def beat_heart(conn: Conn, replica_id: str, command_lag_ms: int = 0) -> None:
    """Record that this replica is alive, and how long its commands waited lately."""
    await conn.execute(
        """
        INSERT INTO sender_replicas (id, command_lag_ms) VALUES ($1, $2)
        ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), command_lag_ms = $2
        """,
        replica_id,
        command_lag_ms,
    )


async def list_live_replicas(conn: Conn, timeout_s: float) -> list[str]:
    """Replicas whose heartbeat is younger than the timeout.

    Right after PostgreSQL restarted, every registered replica counts as live until the
    timeout has passed: none could beat while it was down.
    """
    rows = await conn.fetch(
        """
        SELECT id FROM sender_replicas r WHERE replica_live(r, $1)
        """,
        timeout_s,
    )
    return [row["id"] for row in rows]


async def delete_replica(conn: Conn, replica_id: str) -> None:
    await conn.execute("DELETE FROM sender_replicas WHERE id = $1", replica_id)


async def database_now(conn: Conn) -> datetime:
    """The database's clock: account changes are stamped with it."""
    now: datetime = await conn.fetchval("SELECT now()")
    return now


async def list_serving_accounts(conn: Conn) -> list[AccountRow]:
    """Every account whose queue a sender consumes: all but the archived ones."""
    rows = await conn.fetch(_ACCOUNT_SELECT + " WHERE status <> 'archived'")
    return [AccountRow(**dict(row)) for row in rows]


async def list_accounts_changed_since(conn: Conn, since: datetime) -> list[AccountRow]:
    """Accounts created or changed (archived ones included) after `since`."""
    rows = await conn.fetch(_ACCOUNT_SELECT + " WHERE updated_at > $1", since)
    return [AccountRow(**dict(row)) for row in rows]


async def fetch_account(conn: Conn, account_id: UUID) -> AccountRow | None:
    """One account's delivery configuration as it is now."""
    row = await conn.fetchrow(_ACCOUNT_SELECT + " WHERE id = $1", account_id)
    return None if row is None else AccountRow(**dict(row))


async def fetch_campaign(conn: Conn, campaign_id: UUID) -> CampaignRow | None:
    row = await conn.fetchrow(
        "SELECT id, subject, html_body, text_body, tracking FROM campaigns WHERE id = $1",
        campaign_id,
    )
    return None if row is None else CampaignRow(**dict(row))


async def fetch_content(conn: Conn, message_id: int) -> ContentRow | None:
    """A transactional message's content and attachments, in the order they were given."""
    row = await conn.fetchrow(
        """
        SELECT c.subject, c.html_body, c.text_body, c.reply_to,
               coalesce((SELECT array_agg(ROW(a.filename, a.content_type, a.content)
                                          ORDER BY a.position)
                         FROM message_attachments a WHERE a.message_id = c.message_id),
                        '{}') AS attachments
        FROM message_contents c WHERE c.message_id = $1
        """,
        message_id,
    )
    if row is None:
        return None
    return ContentRow(
        row["subject"],
        row["html_body"],
        row["text_body"],
        row["reply_to"],
        [(a[0], a[1], a[2]) for a in row["attachments"]],
    )


async def still_assigned(conn: Conn, account_id: UUID, message_ids: list[int]) -> list[int]:
    """Those of the messages still waiting, assigned to the account, to be sent; oldest first."""
    rows = await conn.fetch(
        """
        SELECT id FROM messages
        WHERE id = ANY($2::bigint[]) AND status = 'assigned' AND account_id = $1
        ORDER BY id
        """,
        account_id,
        message_ids,
    )
    return [row["id"] for row in rows]


# Outcomes first (compare-and-set from `sending`; a slow sender swept to `uncertain` may still
# record `sent`), then claims (`assigned -> sending`, only for an active account and a running
# campaign). A claimed message whose address is suppressed (for good or not yet expired,
# everywhere or for its campaign) is cancelled instead: the check sits right before the send.
# One statement, so one round trip and one commit for a whole group. No two updates touch the
# same row (Postgres would apply only one of them): outcomes need `sending`/`uncertain`, the
# other two `assigned`, and of those the suppression lookup is NULL for one and true for the
# other, both read in the statement's one snapshot.
# The campaign and suppression checks are scalar subqueries on purpose: as joins, a planner
# short of statistics drives the claim from "every assigned message of the running campaigns"
# (100 ms on 20k rows), or hashes the whole suppression list, instead of starting from the
# handful of ids given and probing the indexes once per message.
_FLUSH = """
WITH outcome AS (
    UPDATE messages AS m
    SET status = o.status,
        last_code = o.code,
        last_error = o.error,
        next_attempt_at = o.next_attempt_at,
        account_id = CASE WHEN o.status = 'deferred' THEN NULL ELSE m.account_id END,
        sent_at = CASE WHEN o.status = 'sent' THEN now() ELSE m.sent_at END,
        updated_at = now()
    FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::text[], $5::timestamptz[])
        AS o (id, status, code, error, next_attempt_at)
    WHERE m.id = o.id
      AND (m.status = 'sending' OR (m.status = 'uncertain' AND o.status = 'sent'))
    RETURNING m.id
),
suppressed AS (
    UPDATE messages AS m
    SET status = 'cancelled', last_error = 'suppressed', updated_at = now()
    FROM unnest($7::bigint[], $8::uuid[]) AS c (id, account_id)
    WHERE m.id = c.id
      AND m.status = 'assigned'
      AND m.account_id = c.account_id
      AND (SELECT true FROM suppressions AS s
           WHERE lower(s.email) = lower(m.email)
             AND (s.campaign_id IS NULL OR s.campaign_id = m.campaign_id)
             AND (s.expires_at IS NULL OR s.expires_at > now())
           LIMIT 1)
    RETURNING m.id
),
claim AS (
    UPDATE messages AS m
    SET status = 'sending',
        sender_replica = $6,
        attempts = m.attempts + 1,
        message_id = coalesce(
            m.message_id, '<' || m.id || '.' || c.token || '@' || c.domain || '>'
        ),
        updated_at = now()
    FROM unnest($7::bigint[], $8::uuid[], $9::text[], $10::text[])
            AS c (id, account_id, token, domain)
        JOIN accounts AS a ON a.id = c.account_id AND a.status = 'active'
    WHERE m.id = c.id
      AND m.status = 'assigned'
      AND m.account_id = c.account_id
      AND (SELECT k.status FROM campaigns AS k WHERE k.id = m.campaign_id) = 'running'
      AND (SELECT true FROM suppressions AS s
           WHERE lower(s.email) = lower(m.email)
             AND (s.campaign_id IS NULL OR s.campaign_id = m.campaign_id)
             AND (s.expires_at IS NULL OR s.expires_at > now())
           LIMIT 1) IS NULL
    RETURNING m.id, m.campaign_id, m.email, m.name, m.variables, m.attempts, m.message_id,
              m.created_at, a.updated_at AS account_updated_at, m.transactional
)
SELECT 'claimed' AS kind, id, campaign_id, email, name, variables, attempts, message_id,
       created_at, account_updated_at, transactional
FROM claim
UNION ALL
SELECT 'suppressed', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM suppressed
UNION ALL
SELECT 'recorded', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM outcome
"""


@dataclass(slots=True)
class FlushArrays:
    """Column arrays of one group commit: outcomes to record, then messages to claim."""

    outcome_ids: list[int]
    outcome_statuses: list[str]
    outcome_codes: list[int | None]
    outcome_errors: list[str | None]
    outcome_retry_at: list[datetime | None]
    claim_ids: list[int]
    claim_accounts: list[UUID]
    claim_tokens: list[str]
    claim_domains: list[str]


@dataclass(slots=True)
class FlushResult:
    """What one group commit did: outcomes recorded, messages claimed or found suppressed."""

    recorded: set[int]
    claimed: dict[int, ClaimedMessage]
    suppressed: set[int]


async def record_outcomes_and_claim(
    conn: Conn, replica_id: str, arrays: FlushArrays
) -> FlushResult:
    """Record outcomes, claim messages and cancel suppressed ones in one statement."""
    rows = await conn.fetch(
        _FLUSH,
        arrays.outcome_ids,
        arrays.outcome_statuses,
        arrays.outcome_codes,
        arrays.outcome_errors,
        arrays.outcome_retry_at,
        replica_id,
        arrays.claim_ids,
        arrays.claim_accounts,
        arrays.claim_tokens,
        arrays.claim_domains,
    )
    result = FlushResult(set(), {}, set())
    for row in rows:
        kind = row["kind"]
        if kind == "claimed":
            result.claimed[row["id"]] = ClaimedMessage(
                id=row["id"],
                campaign_id=row["campaign_id"],
                email=row["email"],
                name=row["name"],
                variables=row["variables"],
                attempts=row["attempts"],
                message_id=row["message_id"],
                enqueued_at=row["created_at"],
                account_updated_at=row["account_updated_at"],
                transactional=row["transactional"],
            )
        elif kind == "suppressed":
            result.suppressed.add(row["id"])
        else:
            result.recorded.add(row["id"])
    return result


async def release_claim(
    conn: Conn, message_id: int, code: int | None, error: str, hold_s: float
) -> None:
    """Undo the claim of a message nothing was sent for: back to `assigned`, no attempt counted.

    Its account could not open a session and waits `hold_s` before trying again: the wait is
    written on the account, so the dispatcher assigns it nothing meanwhile and gives what it
    holds to other accounts.
    """
    await conn.execute(
        """
        WITH released AS (
            UPDATE messages
            SET status = 'assigned', attempts = attempts - 1, sender_replica = NULL,
                last_code = $2, last_error = $3, updated_at = now()
            WHERE id = $1 AND status = 'sending'
            RETURNING account_id
        )
        UPDATE accounts a
        SET held_until = now() + make_interval(secs => $4), held_reason = $3
        FROM released r WHERE a.id = r.account_id
        """,
        message_id,
        code,
        error,
        hold_s,
    )


async def requeue_and_pause_account(
    conn: Conn, message_id: int, account_id: UUID, code: int | None, reason: str
) -> datetime | None:
    """Pause an account whose configuration is wrong, and give its messages back to the queue.

    See pausing.requeue_and_pause_account: the message in hand goes back with the others.
    """
    return await pausing.requeue_and_pause_account(
        conn, account_id, reason, "sender", message_id=message_id, code=code
    )
