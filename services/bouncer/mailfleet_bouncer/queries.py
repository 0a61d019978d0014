"""Every SQL statement the bouncer runs. The caller owns the transaction.

Pooled connections encode and decode json/jsonb themselves (mailfleet_common.db).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from mailfleet_common.db import Conn as Connection

Conn: TypeAlias = "Connection | PoolConnectionProxy[asyncpg.Record]"

# Advisory lock class of the bouncer: (class, 0) is held shared by every live replica, so
# counting its holders counts replicas; (class, hashtext(account id)) is one mailbox's reader.
LOCK_CLASS = 0x6D66_6272  # "mfbr"


@dataclass(frozen=True, slots=True)
class MailboxAccount:
    """An account whose mailbox is read, with what it takes to read it.

    A Gmail-API account is read through the Gmail API (`kind` 'gmail-api'; no IMAP columns);
    any other over IMAP, with its password or (`auth_kind` 'oauth2', no password) XOAUTH2.
    """

    id: UUID
    status: str
    kind: str
    auth_kind: str
    host: str | None
    port: int | None
    tls: str | None
    username: str | None
    password_enc: bytes | None
    folder: str
    processed_folder: str | None
    updated_at: datetime

    @property
    def via_gmail_api(self) -> bool:
        return self.kind == "gmail-api"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    folder: str
    uidvalidity: int
    last_uid: int


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One of our messages that a report is about."""

    id: int
    campaign_id: UUID
    account_id: UUID | None
    email: str
    unsubscribe_scope: str


_MAILBOX_COLUMNS = """
    id, status, kind, auth_kind, imap_host, imap_port, imap_tls, imap_username,
    imap_password_enc, imap_folder, imap_processed_folder, updated_at
"""


def _mailbox(row: asyncpg.Record) -> MailboxAccount:
    return MailboxAccount(
        row["id"],
        row["status"],
        row["kind"],
        row["auth_kind"],
        row["imap_host"],
        row["imap_port"],
        row["imap_tls"],
        row["imap_username"],
        None if row["imap_password_enc"] is None else bytes(row["imap_password_enc"]),
        row["imap_folder"],
        row["imap_processed_folder"],
        row["updated_at"],
    )


# A mailbox is read over IMAP or, for a Gmail-API account, through the Gmail API. Not while
# the account's OAuth grant was refused (consent 'needed'): nothing can log in until someone
# consents again, which sets it back to 'granted'.
_READABLE = """
    (imap_host IS NOT NULL OR kind = 'gmail-api') AND status <> 'archived'
    AND NOT EXISTS (SELECT 1 FROM account_oauth o
                    WHERE o.account_id = accounts.id AND o.consent = 'needed')
"""


async def mailbox_accounts(conn: Conn) -> list[MailboxAccount]:
    """Accounts with a mailbox to read. Paused and disabled ones too: their returns still come."""
    rows = await conn.fetch(
        f"SELECT {_MAILBOX_COLUMNS} FROM accounts "  # noqa: S608 - spliced constants only
        f"WHERE {_READABLE} ORDER BY id"
    )
    return [_mailbox(row) for row in rows]


async def mailbox_account(conn: Conn, account_id: UUID) -> MailboxAccount | None:
    row = await conn.fetchrow(
        f"SELECT {_MAILBOX_COLUMNS} FROM accounts "  # noqa: S608 - spliced constants only
        f"WHERE id = $1 AND {_READABLE}",
        account_id,
    )
    return None if row is None else _mailbox(row)


# -- Mailbox ownership (on the replica's own lock connection) --------------------------------


async def join(conn: Conn) -> None:
    """Announce this replica: hold the shared presence lock for as long as conn lives."""
    await conn.execute("SELECT pg_advisory_lock_shared($1, 0)", LOCK_CLASS)


async def live_replicas(conn: Conn) -> int:
    value = await conn.fetchval(
        """
        SELECT count(DISTINCT pid) FROM pg_locks
        WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objid = 0 AND objsubid = 2
          AND granted
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        LOCK_CLASS,
    )
    return max(int(value or 0), 1)


async def try_own(conn: Conn, account_id: UUID) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, str(account_id)
        )
    )


async def disown(conn: Conn, account_id: UUID) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_CLASS, str(account_id))


# -- Checkpoints ----------------------------------------------------------------------------


async def checkpoint(conn: Conn, account_id: UUID) -> Checkpoint | None:
    row = await conn.fetchrow(
        "SELECT folder, uidvalidity, last_uid FROM mailbox_checkpoints WHERE account_id = $1",
        account_id,
    )
    return None if row is None else Checkpoint(row["folder"], row["uidvalidity"], row["last_uid"])


async def start_checkpoint(conn: Conn, account_id: UUID, folder: str, uidvalidity: int) -> None:
    """Read `folder` from its first UID: a new mailbox, folder or UIDVALIDITY."""
    await conn.execute(
        """
        INSERT INTO mailbox_checkpoints (account_id, folder, uidvalidity, last_uid)
        VALUES ($1, $2, $3, 0)
        ON CONFLICT (account_id) DO UPDATE
        SET folder = excluded.folder, uidvalidity = excluded.uidvalidity, last_uid = 0
        """,
        account_id,
        folder,
        uidvalidity,
    )


async def advance_checkpoint(conn: Conn, account_id: UUID, uidvalidity: int, uid: int) -> None:
    await conn.execute(
        """
        UPDATE mailbox_checkpoints SET last_uid = greatest(last_uid, $3)
        WHERE account_id = $1 AND uidvalidity = $2
        """,
        account_id,
        uidvalidity,
        uid,
    )


async def record_poll(conn: Conn, account_id: UUID, error: str | None) -> None:
    """When the mailbox was last polled and how it went.

    A mailbox never read yet gets a placeholder row (UIDVALIDITY 0, no folder), so that an
    error is visible from the first poll; the first successful read starts it properly.
    """
    await conn.execute(
        """
        INSERT INTO mailbox_checkpoints (account_id, folder, uidvalidity, last_error)
        SELECT id, '', 0, $2 FROM accounts WHERE id = $1
        ON CONFLICT (account_id) DO UPDATE SET polled_at = now(), last_error = $2
        """,
        account_id,
        error,
    )


# -- Gmail mailboxes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GmailState:
    """Where a Gmail mailbox was read up to (see gmail_mailboxes)."""

    history_id: str | None
    processed_label_id: str | None
    backoff_until: datetime | None


async def gmail_state(conn: Conn, account_id: UUID) -> GmailState:
    row = await conn.fetchrow(
        """
        SELECT history_id, processed_label_id, backoff_until FROM gmail_mailboxes
        WHERE account_id = $1
        """,
        account_id,
    )
    if row is None:
        return GmailState(None, None, None)
    return GmailState(row["history_id"], row["processed_label_id"], row["backoff_until"])


async def save_gmail_label(conn: Conn, account_id: UUID, label_id: str) -> None:
    await conn.execute(
        """
        INSERT INTO gmail_mailboxes (account_id, processed_label_id) VALUES ($1, $2)
        ON CONFLICT (account_id) DO UPDATE SET processed_label_id = excluded.processed_label_id
        """,
        account_id,
        label_id,
    )


async def gmail_synced(conn: Conn, account_id: UUID, history_id: str, full: bool) -> None:
    """The mailbox was read up to `history_id`: the next read starts there."""
    await conn.execute(
        """
        INSERT INTO gmail_mailboxes (account_id, history_id, synced_at, full_synced_at)
        VALUES ($1, $2, now(), CASE WHEN $3 THEN now() END)
        ON CONFLICT (account_id) DO UPDATE
        SET history_id = excluded.history_id, synced_at = now(), polled_at = now(),
            full_synced_at = coalesce(excluded.full_synced_at, gmail_mailboxes.full_synced_at),
            last_error = NULL, backoff_until = NULL
        """,
        account_id,
        history_id,
        full,
    )


async def forget_gmail_history(conn: Conn, account_id: UUID) -> None:
    """Gmail no longer has the history from the stored id: the next read is a full one."""
    await conn.execute(
        "UPDATE gmail_mailboxes SET history_id = NULL WHERE account_id = $1", account_id
    )


async def gmail_failed(
    conn: Conn, account_id: UUID, error: str, backoff_until: datetime | None
) -> None:
    """Why the mailbox was not read, and (asked to slow down) when to try again."""
    await conn.execute(
        """
        INSERT INTO gmail_mailboxes (account_id, last_error, backoff_until)
        SELECT id, $2, $3 FROM accounts WHERE id = $1
        ON CONFLICT (account_id) DO UPDATE
        SET polled_at = now(), last_error = $2, backoff_until = $3
        """,
        account_id,
        error,
        backoff_until,
    )


async def known_provider_ids(conn: Conn, account_id: UUID, provider_ids: Sequence[str]) -> set[str]:
    """Which of these provider message ids the account's reports already hold."""
    rows = await conn.fetch(
        """
        SELECT provider_id FROM inbound_reports
        WHERE account_id = $1 AND provider_id = ANY($2::text[])
        """,
        account_id,
        list(provider_ids),
    )
    return {row["provider_id"] for row in rows}


# -- Reports --------------------------------------------------------------------------------


async def insert_report(
    conn: Conn,
    *,
    account_id: UUID,
    folder: str,
    uidvalidity: int,
    uid: int,
    digest: bytes,
    kind: str,
    parser: str,
    sender: str | None,
    subject: str | None,
    size: int,
    truncated: bool,
    problem: str | None,
    received_at: datetime,
    provider_id: str | None = None,
) -> int | None:
    """The new report's id, or None when this very message was processed before.

    Before: the same bytes in the account's mailbox, or the same provider message id.
    """
    value = await conn.fetchval(
        """
        INSERT INTO inbound_reports (account_id, folder, uidvalidity, uid, digest, kind, parser,
                                     sender, subject, size, truncated, problem, received_at,
                                     provider_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
        ON CONFLICT DO NOTHING
        RETURNING id
        """,
        account_id,
        folder,
        uidvalidity,
        uid,
        digest,
        kind,
        parser,
        sender,
        subject,
        size,
        truncated,
        problem,
        received_at,
        provider_id,
    )
    return None if value is None else int(value)


async def finish_report(
    conn: Conn,
    report_id: int,
    *,
    details: list[dict[str, Any]],
    matched: int,
    raw: bytes | None,
    published: bool,
    events: Sequence[dict[str, Any]],
    account_id: UUID,
    uidvalidity: int,
    uid: int,
) -> None:
    """Complete the report, record its events and move the checkpoint past it: one statement.

    Events are deduplicated by their key. Data-modifying CTEs run whether or not the main
    statement reads them.
    """
    await conn.execute(
        """
        WITH report AS (
            UPDATE inbound_reports
            SET details = $2::jsonb, matched = $3, raw = $4,
                published_at = CASE WHEN $5 THEN now() END
            WHERE id = $1
        ), checkpoint AS (
            UPDATE mailbox_checkpoints SET last_uid = greatest(last_uid, $9)
            WHERE account_id = $7 AND uidvalidity = $8
        )
        INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data,
                            event_key)
        SELECT e.occurred_at, e.type, e.campaign_id, e.message_id, e.account_id, e.data,
               e.event_key
        FROM jsonb_to_recordset($6::jsonb) AS e (occurred_at timestamptz, type text,
             campaign_id uuid, message_id bigint, account_id uuid, data jsonb, event_key text)
        ON CONFLICT (event_key, occurred_at) DO NOTHING
        """,
        report_id,
        details,
        matched,
        raw,
        published,
        list(events),
        account_id,
        uidvalidity,
        uid,
    )


_SENT_COLUMNS = """
    m.id, m.campaign_id, m.account_id, m.email, c.unsubscribe_scope
"""


def _sent(row: asyncpg.Record) -> SentMessage:
    return SentMessage(
        row["id"], row["campaign_id"], row["account_id"], row["email"], row["unsubscribe_scope"]
    )


async def messages_by_header_ids(conn: Conn, header_ids: Sequence[str]) -> list[SentMessage]:
    """Our messages with these Message-ID header values (messages_message_id_idx)."""
    rows = await conn.fetch(
        f"""
        SELECT {_SENT_COLUMNS} FROM messages m JOIN campaigns c ON c.id = m.campaign_id
        WHERE m.message_id = ANY($1::text[])
        """,  # noqa: S608 - spliced constant only
        list(header_ids),
    )
    return [_sent(row) for row in rows]


async def message_by_id(conn: Conn, message_id: int) -> SentMessage | None:
    row = await conn.fetchrow(
        f"""
        SELECT {_SENT_COLUMNS} FROM messages m JOIN campaigns c ON c.id = m.campaign_id
        WHERE m.id = $1
        """,  # noqa: S608 - spliced constant only
        message_id,
    )
    return None if row is None else _sent(row)


async def latest_message_to(conn: Conn, account_id: UUID, email: str) -> SentMessage | None:
    """The last message this account sent to the address: the fallback when no header matched."""
    row = await conn.fetchrow(
        f"""
        SELECT {_SENT_COLUMNS} FROM messages m JOIN campaigns c ON c.id = m.campaign_id
        WHERE lower(m.email) = lower($2) AND m.account_id = $1 AND m.sent_at IS NOT NULL
        ORDER BY m.sent_at DESC LIMIT 1
        """,  # noqa: S608 - spliced constant only
        account_id,
        email,
    )
    return None if row is None else _sent(row)


async def is_account_address(conn: Conn, account_id: UUID, email: str) -> bool:
    """Whether the address is the account's own: its From, SMTP or IMAP user name."""
    found = await conn.fetchval(
        """
        SELECT true FROM accounts
        WHERE id = $1
          AND lower($2) IN (lower(from_email), lower(smtp_username), lower(imap_username))
        """,
        account_id,
        email,
    )
    return bool(found)


async def mark_bounced(conn: Conn, message_id: int, bounce: str) -> None:
    """Record a bounce on the message; a hard bounce is never downgraded by a later soft one."""
    await conn.execute(
        """
        UPDATE messages SET bounce = $2, bounced_at = coalesce(bounced_at, now())
        WHERE id = $1 AND bounce IS DISTINCT FROM 'hard'
        """,
        message_id,
        bounce,
    )


async def mark_complained(conn: Conn, message_id: int) -> None:
    await conn.execute(
        "UPDATE messages SET complained_at = coalesce(complained_at, now()) WHERE id = $1",
        message_id,
    )


async def mark_replied(conn: Conn, message_id: int) -> None:
    await conn.execute(
        "UPDATE messages SET replied_at = coalesce(replied_at, now()) WHERE id = $1", message_id
    )


async def suppress(
    conn: Conn,
    email: str,
    campaign_id: UUID | None,
    reason: str,
    source: str,
    until: datetime | None = None,
) -> int:
    """Suppress the address (in one campaign, or all) and cancel its unsent messages there."""
    value = await conn.fetchval(
        "SELECT suppress_address($1, $2, $3, $4, $5)", email, campaign_id, reason, source, until
    )
    return int(value or 0)


async def count_soft_bounce(
    conn: Conn, email: str, report_id: int, message_id: int | None, window_days: float
) -> int:
    """Record a soft bounce of the address; how many of its messages soft-bounced in the window.

    Messages, not reports: a server that sends several delay notices for one message counts
    once.
    """
    await conn.execute(
        "INSERT INTO soft_bounces (email, report_id, message_id) VALUES (lower($1), $2, $3)",
        email,
        report_id,
        message_id,
    )
    value = await conn.fetchval(
        """
        SELECT count(DISTINCT coalesce(message_id, -report_id)) FROM soft_bounces
        WHERE email = lower($1) AND occurred_at > now() - make_interval(secs => $2)
        """,
        email,
        window_days * 86400,
    )
    return int(value or 0)


@dataclass(frozen=True, slots=True)
class Rates:
    sends: int
    hard_bounces: int
    complaints: int


async def account_rates(conn: Conn, account_id: UUID, window: int) -> Rates:
    """Hard bounces and complaints among the account's last `window` sends since rates_since."""
    row = await conn.fetchrow(
        """
        SELECT r.sends, r.hard_bounces, r.complaints
        FROM accounts a CROSS JOIN LATERAL account_rates(a, $2) AS r
        WHERE a.id = $1
        """,
        account_id,
        window,
    )
    if row is None:
        return Rates(0, 0, 0)
    return Rates(row["sends"], row["hard_bounces"], row["complaints"])


async def pause_account(conn: Conn, account_id: UUID, reason: str) -> datetime | None:
    """Pause an active account and record why; when it paused, or None if it was not active."""
    paused_at: datetime | None = await conn.fetchval(
        "SELECT pause_account($1, $2, 'bouncer')", account_id, reason
    )
    return paused_at


# -- Outbox ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unpublished:
    id: int
    account_id: UUID
    kind: str
    details: list[dict[str, Any]]
    received_at: datetime


async def unpublished_reports(conn: Conn, limit: int) -> list[Unpublished]:
    """Reports whose bus copy has not gone out, locked so one replica publishes each."""
    rows = await conn.fetch(
        """
        SELECT id, account_id, kind, details, received_at FROM inbound_reports
        WHERE published_at IS NULL
        ORDER BY id LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    return [
        Unpublished(row["id"], row["account_id"], row["kind"], row["details"], row["received_at"])
        for row in rows
    ]


async def mark_published(conn: Conn, report_ids: Sequence[int]) -> None:
    await conn.execute(
        "UPDATE inbound_reports SET published_at = now() WHERE id = ANY($1::bigint[])",
        list(report_ids),
    )
