"""SQL of sender accounts: settings, secrets, tags and health."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any, get_args
from uuid import UUID

import asyncpg
from mailfleet_common.db import Conn

from mailfleet_api import schemas
from mailfleet_api.queries.pages import keyset_page

ACCOUNT_SELECT = """
    SELECT a.id, a.name, a.kind, a.smtp_host, a.smtp_port, a.smtp_tls, a.smtp_username,
           a.smtp_password_enc IS NOT NULL AS has_password, a.from_email, a.from_name,
           a.daily_limit, a.min_gap_ms, a.warmup_started_on IS NOT NULL AS warmup_enabled,
           a.warmup_started_on, a.warmup_initial, a.warmup_increment, a.status,
           a.status_reason, a.tags, nullif(a.rates_since, '-infinity') AS rates_since,
           CASE WHEN account_held(a) THEN a.held_until END AS held_until,
           CASE WHEN account_held(a) THEN a.held_reason END AS held_reason,
           a.imap_host, a.imap_port, a.imap_tls, a.imap_username,
           a.imap_password_enc IS NOT NULL AS imap_has_password, a.imap_folder,
           a.imap_processed_folder, a.created_at, a.updated_at,
           d.day, coalesce(u.reserved, 0) AS reserved, coalesce(u.sent, 0) AS sent,
           coalesce(u.failed, 0) AS failed, account_effective_limit(a, d.day) AS effective_limit
    FROM accounts a
    CROSS JOIN (SELECT (now() AT TIME ZONE 'utc')::date AS day) d
    LEFT JOIN account_daily_usage u ON u.account_id = a.id AND u.day = d.day
"""

_USAGE_FIELDS = ("day", "reserved", "sent", "failed", "effective_limit")
_IMAP_FIELDS = ("host", "port", "tls", "username", "has_password", "folder", "processed_folder")


def account_from_row(row: asyncpg.Record) -> schemas.Account:
    values = dict(row)
    usage = {field: values.pop(field) for field in _USAGE_FIELDS}
    imap = {field: values.pop(f"imap_{field}") for field in _IMAP_FIELDS}
    return schemas.Account.model_validate(
        {**values, "today": usage, "imap": imap if imap["host"] is not None else None}
    )


async def fetch_account(conn: Conn, account_id: UUID) -> schemas.Account | None:
    row = await conn.fetchrow(ACCOUNT_SELECT + " WHERE a.id = $1", account_id)
    return None if row is None else account_from_row(row)


async def list_accounts(
    conn: Conn,
    limit: int,
    after: tuple[datetime, UUID] | None,
    include_archived: bool,
    tags: Sequence[str] | None,
) -> tuple[list[schemas.Account], bool]:
    """A page of accounts, oldest first, after the given (created_at, id).

    With `tags`, only those carrying any of them.
    """
    where = "($1 OR a.status <> 'archived') AND ($2::text[] IS NULL OR a.tags && $2)"
    args: list[Any] = [include_archived, tags]
    keys = ("a.created_at", "a.id")
    rows, more = await keyset_page(
        conn, ACCOUNT_SELECT, keys, where, args, limit, after, descending=False
    )
    return [account_from_row(r) for r in rows], more


async def insert_account(conn: Conn, values: dict[str, Any]) -> UUID:
    """Create an account from the full set of its writable columns; returns its id."""
    account_id: UUID = await conn.fetchval(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, smtp_username,
                              smtp_password_enc, from_email, from_name, daily_limit, min_gap_ms,
                              warmup_started_on, warmup_initial, warmup_increment, status,
                              status_reason, imap_host, imap_port, imap_tls, imap_username,
                              imap_password_enc, imap_folder, imap_processed_folder, tags)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                $19, $20, $21, $22, $23)
        RETURNING id
        """,
        *(values[column] for column in ACCOUNT_WRITABLE),
    )
    return account_id


ACCOUNT_WRITABLE = (
    "name", "smtp_host", "smtp_port", "smtp_tls", "smtp_username", "smtp_password_enc",
    "from_email", "from_name", "daily_limit", "min_gap_ms", "warmup_started_on",
    "warmup_initial", "warmup_increment", "status", "status_reason", "imap_host", "imap_port",
    "imap_tls", "imap_username", "imap_password_enc", "imap_folder", "imap_processed_folder",
    "tags",
)  # fmt: skip


async def lock_account(conn: Conn, account_id: UUID) -> dict[str, Any] | None:
    """The writable columns of an account, row-locked until the transaction ends."""
    row = await conn.fetchrow(
        """
        SELECT name, smtp_host, smtp_port, smtp_tls, smtp_username, smtp_password_enc,
               from_email, from_name, daily_limit, min_gap_ms, warmup_started_on,
               warmup_initial, warmup_increment, status, status_reason, imap_host, imap_port,
               imap_tls, imap_username, imap_password_enc, imap_folder, imap_processed_folder,
               tags
        FROM accounts WHERE id = $1 FOR UPDATE
        """,
        account_id,
    )
    return None if row is None else dict(row)


async def update_account(
    conn: Conn, account_id: UUID, values: dict[str, Any], restart_rates: bool
) -> None:
    """Write the full set of an account's writable columns.

    restart_rates: bounce and complaint rates count only sends from now on.
    """
    await conn.execute(
        """
        UPDATE accounts SET name = $2, smtp_host = $3, smtp_port = $4, smtp_tls = $5,
               smtp_username = $6, smtp_password_enc = $7, from_email = $8, from_name = $9,
               daily_limit = $10, min_gap_ms = $11, warmup_started_on = $12,
               warmup_initial = $13, warmup_increment = $14, status = $15, status_reason = $16,
               imap_host = $17, imap_port = $18, imap_tls = $19, imap_username = $20,
               imap_password_enc = $21, imap_folder = $22, imap_processed_folder = $23,
               tags = $24, rates_since = CASE WHEN $25 THEN now() ELSE rates_since END,
               updated_at = now()
        WHERE id = $1
        """,
        account_id,
        *(values[column] for column in ACCOUNT_WRITABLE),
        restart_rates,
    )


async def delete_mailbox_checkpoint(conn: Conn, account_id: UUID) -> None:
    """Forget where the account's mailbox was read up to: it is read from its start."""
    await conn.execute("DELETE FROM mailbox_checkpoints WHERE account_id = $1", account_id)


async def archive_account(conn: Conn, account_id: UUID) -> bool:
    """Archive an account; False if there is no such account."""
    found = await conn.fetchval(
        """
        UPDATE accounts
        SET status = 'archived', status_reason = 'archived via API', updated_at = now()
        WHERE id = $1
        RETURNING true
        """,
        account_id,
    )
    return bool(found)


async def unusable_accounts(conn: Conn, account_ids: Sequence[UUID]) -> list[UUID]:
    """The given ids that name no account, or an archived one."""
    rows = await conn.fetch(
        """
        SELECT i.id FROM unnest($1::uuid[]) AS i (id)
        WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = i.id AND a.status <> 'archived')
        """,
        list(account_ids),
    )
    return [r["id"] for r in rows]


async def uncarried_tags(conn: Conn, tags: Sequence[str]) -> list[str]:
    """The given tags that no account carries, archived ones aside."""
    rows = await conn.fetch(
        """
        SELECT t.tag FROM unnest($1::text[]) AS t (tag)
        WHERE NOT EXISTS (SELECT 1 FROM accounts a
                          WHERE a.tags @> ARRAY[t.tag] AND a.status <> 'archived')
        ORDER BY t.tag
        """,
        list(tags),
    )
    return [r["tag"] for r in rows]


async def fetch_account_secrets(conn: Conn) -> list[asyncpg.Record]:
    """Every account's encrypted SMTP and IMAP passwords, row-locked for re-encryption."""
    return await conn.fetch(
        """
        SELECT id, name, smtp_password_enc, imap_password_enc, imap_host, imap_username
        FROM accounts
        WHERE smtp_password_enc IS NOT NULL OR imap_password_enc IS NOT NULL
        ORDER BY id FOR UPDATE
        """
    )


async def set_account_secrets(
    conn: Conn, account_id: UUID, smtp_password_enc: bytes | None, imap_password_enc: bytes | None
) -> None:
    await conn.execute(
        "UPDATE accounts SET smtp_password_enc = $2, imap_password_enc = $3 WHERE id = $1",
        account_id,
        smtp_password_enc,
        imap_password_enc,
    )


async def forget_account_secrets(
    conn: Conn, account_id: UUID, smtp: bool, imap: bool, reason: str
) -> None:
    """Drop passwords no key can decrypt; an active account is paused until they are given.

    An IMAP setting cannot stand without its password, so the whole setting goes.
    """
    await conn.execute(
        """
        UPDATE accounts
        SET smtp_password_enc = CASE WHEN $2 THEN NULL ELSE smtp_password_enc END,
            imap_host = CASE WHEN $3 THEN NULL ELSE imap_host END,
            imap_port = CASE WHEN $3 THEN NULL ELSE imap_port END,
            imap_tls = CASE WHEN $3 THEN NULL ELSE imap_tls END,
            imap_username = CASE WHEN $3 THEN NULL ELSE imap_username END,
            imap_password_enc = CASE WHEN $3 THEN NULL ELSE imap_password_enc END,
            imap_processed_folder = CASE WHEN $3 THEN NULL ELSE imap_processed_folder END,
            status = CASE WHEN status = 'active' THEN 'paused' ELSE status END,
            status_reason = CASE WHEN status = 'active' THEN $4 ELSE status_reason END,
            updated_at = now()
        WHERE id = $1
        """,
        account_id,
        smtp,
        imap,
        reason,
    )


# Counters of schemas.Feedback over a set of messages.
FEEDBACK_COUNTS = """
    count(*) FILTER (WHERE bounce = 'hard') AS hard_bounces,
    count(*) FILTER (WHERE bounce = 'soft') AS soft_bounces,
    count(complained_at) AS complaints,
    count(replied_at) AS replies
"""


_MAILBOX_POSITION = ("folder", "uidvalidity", "last_uid", "polled_at", "last_error")


async def account_health(conn: Conn, account_id: UUID, window: int) -> schemas.AccountHealth | None:
    """An account's feedback and the reading of its mailbox; None: no account.

    The feedback is on the account's `window` newest sends since rates_since; the mailbox
    block is there only if the account has IMAP settings.
    """
    row = await conn.fetchrow(
        """
        SELECT a.id AS account_id, a.status, a.status_reason,
               nullif(a.rates_since, '-infinity') AS rates_since,
               a.imap_host IS NOT NULL AS reads_mailbox,
               -- UIDVALIDITY 0: the bouncer has not read the mailbox yet (only failed to).
               nullif(m.folder, '') AS folder, nullif(m.uidvalidity, 0) AS uidvalidity,
               CASE WHEN m.uidvalidity <> 0 THEN m.last_uid END AS last_uid,
               m.polled_at, m.last_error, r.reports, f.*
        FROM accounts a
        LEFT JOIN mailbox_checkpoints m ON m.account_id = a.id
        CROSS JOIN LATERAL (
            SELECT coalesce(jsonb_object_agg(kind, n), '{}') AS reports
            FROM (SELECT kind, count(*) AS n FROM inbound_reports
                  WHERE account_id = a.id AND received_at > now() - $3 * interval '1 day'
                  GROUP BY kind) k
        ) r
        CROSS JOIN LATERAL (
            SELECT count(*) AS sent,
        """  # noqa: S608 - a spliced constant only
        + FEEDBACK_COUNTS
        + """
            FROM (SELECT bounce, complained_at, replied_at FROM messages
                  WHERE account_id = a.id AND sent_at IS NOT NULL AND sent_at > a.rates_since
                  ORDER BY sent_at DESC LIMIT $2) recent
        ) f
        WHERE a.id = $1
        """,
        account_id,
        window,
        schemas.MAILBOX_REPORT_DAYS,
    )
    if row is None:
        return None
    values = dict(row)
    mailbox = None
    if values["reads_mailbox"]:
        counts = values["reports"]
        reports = {kind: counts.get(kind, 0) for kind in get_args(schemas.InboundKind)}
        mailbox = {name: values[name] for name in _MAILBOX_POSITION} | {"reports": reports}
    return schemas.AccountHealth.model_validate(
        {**values, **schemas.feedback_figures(values), "window": window, "mailbox": mailbox}
    )
