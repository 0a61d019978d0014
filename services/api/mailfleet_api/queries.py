"""Every SQL statement the API runs. The caller owns the transaction."""

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, get_args
from uuid import UUID

import asyncpg
from mailfleet_common.db import Conn

from mailfleet_api import schemas

# --- users --------------------------------------------------------------------------------

_USER_COLUMNS = "id, email, role, disabled, created_at"


async def insert_user(conn: Conn, email: str, password_hash: str, role: str) -> schemas.User | None:
    """Create a user, or return None if the email is taken (case-insensitively)."""
    row = await conn.fetchrow(
        """
        INSERT INTO users (email, password_hash, role) VALUES ($1, $2, $3)
        ON CONFLICT (lower(email)) DO NOTHING
        RETURNING id, email, role, disabled, created_at
        """,
        email,
        password_hash,
        role,
    )
    return None if row is None else schemas.User.model_validate(dict(row))


async def fetch_login(conn: Conn, email: str) -> asyncpg.Record | None:
    """The id, password hash and disabled flag of the user with this email."""
    return await conn.fetchrow(
        "SELECT id, password_hash, disabled FROM users WHERE lower(email) = lower($1)", email
    )


async def set_user_password(conn: Conn, email: str, password_hash: str) -> bool:
    """Replace a user's password; False if there is no such user."""
    done = await conn.fetchval(
        "UPDATE users SET password_hash = $2 WHERE lower(email) = lower($1) RETURNING id",
        email,
        password_hash,
    )
    return done is not None


async def fetch_user_role(conn: Conn, user_id: UUID) -> str | None:
    """The role of an enabled user, or None if the user is gone or disabled."""
    role: str | None = await conn.fetchval(
        "SELECT role FROM users WHERE id = $1 AND NOT disabled", user_id
    )
    return role


async def fetch_user_by_email(conn: Conn, email: str) -> schemas.User | None:
    row = await conn.fetchrow(
        "SELECT id, email, role, disabled, created_at FROM users WHERE lower(email) = lower($1)",
        email,
    )
    return None if row is None else schemas.User.model_validate(dict(row))


async def list_users(conn: Conn, limit: int, offset: int) -> tuple[list[schemas.User], int]:
    rows = await conn.fetch(
        """
        SELECT id, email, role, disabled, created_at FROM users
        ORDER BY created_at, id LIMIT $1 OFFSET $2
        """,
        limit,
        offset,
    )
    total: int = await conn.fetchval("SELECT count(*) FROM users")
    return [schemas.User.model_validate(dict(r)) for r in rows], total


# --- API keys -----------------------------------------------------------------------------


async def insert_api_key(
    conn: Conn, user_id: UUID, name: str, prefix: str, key_hash: bytes, role: str
) -> schemas.ApiKey:
    row = await conn.fetchrow(
        """
        INSERT INTO api_keys (user_id, name, prefix, key_hash, role)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING id, user_id, name, prefix, role, created_at, last_used_at, revoked_at
        """,
        user_id,
        name,
        prefix,
        key_hash,
        role,
    )
    return schemas.ApiKey.model_validate(dict(row))  # type: ignore[arg-type]


async def fetch_api_key_for_auth(conn: Conn, prefix: str) -> asyncpg.Record | None:
    """A live key with this prefix whose user is enabled, with the key's hash and role."""
    return await conn.fetchrow(
        """
        SELECT k.id, k.user_id, k.key_hash, k.role AS key_role, u.role AS user_role
        FROM api_keys k JOIN users u ON u.id = k.user_id
        WHERE k.prefix = $1 AND k.revoked_at IS NULL AND NOT u.disabled
        """,
        prefix,
    )


async def touch_api_key(conn: Conn, key_id: UUID) -> None:
    """Record a use of the key, at most once a minute so reads stay reads."""
    await conn.execute(
        """
        UPDATE api_keys SET last_used_at = now()
        WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
        """,
        key_id,
    )


async def list_api_keys(conn: Conn, limit: int, offset: int) -> tuple[list[schemas.ApiKey], int]:
    rows = await conn.fetch(
        """
        SELECT id, user_id, name, prefix, role, created_at, last_used_at, revoked_at
        FROM api_keys ORDER BY created_at, id LIMIT $1 OFFSET $2
        """,
        limit,
        offset,
    )
    total: int = await conn.fetchval("SELECT count(*) FROM api_keys")
    return [schemas.ApiKey.model_validate(dict(r)) for r in rows], total


async def revoke_api_key(conn: Conn, key_id: UUID) -> schemas.ApiKey | None:
    """Revoke a key (keeping the first revocation time); None if there is no such key."""
    row = await conn.fetchrow(
        """
        UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
        RETURNING id, user_id, name, prefix, role, created_at, last_used_at, revoked_at
        """,
        key_id,
    )
    return None if row is None else schemas.ApiKey.model_validate(dict(row))


# --- accounts -----------------------------------------------------------------------------

_ACCOUNT_SELECT = """
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


def _account(row: asyncpg.Record) -> schemas.Account:
    values = dict(row)
    usage = {field: values.pop(field) for field in _USAGE_FIELDS}
    imap = {field: values.pop(f"imap_{field}") for field in _IMAP_FIELDS}
    return schemas.Account.model_validate(
        {**values, "today": usage, "imap": imap if imap["host"] is not None else None}
    )


async def fetch_account(conn: Conn, account_id: UUID) -> schemas.Account | None:
    row = await conn.fetchrow(_ACCOUNT_SELECT + " WHERE a.id = $1", account_id)
    return None if row is None else _account(row)


async def list_accounts(
    conn: Conn, limit: int, offset: int, include_archived: bool, tags: Sequence[str] | None
) -> tuple[list[schemas.Account], int]:
    """A page of accounts, oldest first; with `tags`, only those carrying any of them."""
    rows = await conn.fetch(
        _ACCOUNT_SELECT
        + """
        WHERE ($3 OR a.status <> 'archived') AND ($4::text[] IS NULL OR a.tags && $4)
        ORDER BY a.created_at, a.id LIMIT $1 OFFSET $2
        """,
        limit,
        offset,
        include_archived,
        tags,
    )
    total: int = await conn.fetchval(
        """
        SELECT count(*) FROM accounts
        WHERE ($1 OR status <> 'archived') AND ($2::text[] IS NULL OR tags && $2)
        """,
        include_archived,
        tags,
    )
    return [_account(r) for r in rows], total


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


async def list_pools(
    conn: Conn, limit: int, offset: int, tag: str | None = None
) -> tuple[list[schemas.Pool], int]:
    """Every tag that an account carries or a campaign names (or only `tag`), by name.

    Member counts by status, today's capacity of the active members, and campaigns by status.
    """
    rows = await conn.fetch(
        """
        WITH d AS (SELECT (now() AT TIME ZONE 'utc')::date AS day),
        members AS (
            SELECT t.tag, a.status, account_effective_limit(a, d.day) AS day_limit,
                   coalesce(u.reserved, 0) AS reserved
            FROM accounts a CROSS JOIN d CROSS JOIN unnest(a.tags) AS t (tag)
            LEFT JOIN account_daily_usage u ON u.account_id = a.id AND u.day = d.day
            WHERE $3::text IS NULL OR a.tags @> ARRAY[$3]
        ), by_tag AS (
            SELECT tag, jsonb_object_agg(status, n) AS accounts,
                   sum(day_limit) FILTER (WHERE status = 'active') AS daily_capacity,
                   sum(left_today) FILTER (WHERE status = 'active') AS remaining_today
            FROM (SELECT tag, status, count(*) AS n, sum(day_limit) AS day_limit,
                         sum(greatest(day_limit - reserved, 0)) AS left_today
                  FROM members GROUP BY tag, status) s
            GROUP BY tag
        ), named AS (
            SELECT tag, jsonb_object_agg(status, n) AS campaigns
            FROM (SELECT t.tag, c.status, count(*) AS n
                  FROM campaigns c CROSS JOIN unnest(c.pool_tags) AS t (tag)
                  WHERE $3::text IS NULL OR c.pool_tags @> ARRAY[$3]
                  GROUP BY t.tag, c.status) s
            GROUP BY tag
        )
        SELECT tag, coalesce(b.accounts, '{}') AS accounts,
               coalesce(b.daily_capacity, 0) AS daily_capacity,
               coalesce(b.remaining_today, 0) AS remaining_today,
               coalesce(n.campaigns, '{}') AS campaigns, count(*) OVER () AS total
        FROM by_tag b FULL JOIN named n USING (tag)
        WHERE $3::text IS NULL OR tag = $3
        ORDER BY tag LIMIT $1 OFFSET $2
        """,
        limit,
        offset,
        tag,
    )
    statuses = get_args(schemas.AccountStatus), get_args(schemas.CampaignStatus)
    pools = [
        schemas.Pool.model_validate(
            {
                **dict(r),
                "accounts": {s: r["accounts"].get(s, 0) for s in statuses[0]},
                "campaigns": {s: r["campaigns"].get(s, 0) for s in statuses[1]},
            }
        )
        for r in rows
    ]
    return pools, rows[0]["total"] if rows else 0


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
_FEEDBACK_COUNTS = """
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
        + _FEEDBACK_COUNTS
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


# --- campaigns ----------------------------------------------------------------------------


async def insert_campaign(conn: Conn, owner_id: UUID, body: schemas.CampaignCreate) -> UUID:
    campaign_id: UUID = await conn.fetchval(
        """
        INSERT INTO campaigns (owner_id, name, subject, html_body, text_body, account_ids,
                               start_at, tracking, unsubscribe_scope, pool_tags)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        RETURNING id
        """,
        owner_id,
        body.name,
        body.subject,
        body.html_body,
        body.text_body,
        list(dict.fromkeys(body.account_ids)),
        body.start_at,
        body.tracking,
        body.unsubscribe_scope,
        body.pools,
    )
    return campaign_id


async def fetch_campaign(conn: Conn, campaign_id: UUID) -> schemas.Campaign | None:
    """A campaign with the number of its messages in each status."""
    row = await conn.fetchrow(
        """
        SELECT c.id, c.owner_id, c.name, c.subject, c.account_ids, c.pool_tags AS pools,
               c.status, c.start_at, c.tracking, c.unsubscribe_scope, c.created_at,
               c.updated_at, c.completed_at, c.html_body, c.text_body,
               coalesce((SELECT jsonb_object_agg(s.status, s.n) FROM (
                   SELECT status, count(*) AS n FROM messages WHERE campaign_id = c.id
                   GROUP BY status) s), '{}'::jsonb) AS messages,
               p.pool_accounts, p.remaining_today,
               cardinality(c.account_ids) = 0 AND cardinality(c.pool_tags) = 0 AS every_account
        FROM campaigns c
        CROSS JOIN LATERAL (
            SELECT coalesce(jsonb_object_agg(status, n), '{}') AS pool_accounts,
                   coalesce(sum(left_today) FILTER (WHERE status = 'active'), 0)
                       AS remaining_today
            FROM (SELECT a.status, count(*) AS n,
                         sum(greatest(account_effective_limit(a, d.day)
                                      - coalesce(u.reserved, 0), 0)) AS left_today
                  FROM accounts a
                  CROSS JOIN (SELECT (now() AT TIME ZONE 'utc')::date AS day) d
                  LEFT JOIN account_daily_usage u ON u.account_id = a.id AND u.day = d.day
                  -- The dispatcher's rule: named accounts, tagged ones, or every one.
                  WHERE a.id = ANY(c.account_ids) OR a.tags && c.pool_tags
                     OR (cardinality(c.account_ids) = 0 AND cardinality(c.pool_tags) = 0)
                  GROUP BY a.status) s
        ) p
        WHERE c.id = $1
        """,
        campaign_id,
    )
    if row is None:
        return None
    values = dict(row)
    values["total_messages"] = sum(values["messages"].values())
    members = values.pop("pool_accounts")
    values["pool"] = {
        "every_account": values.pop("every_account"),
        "accounts": {s: members.get(s, 0) for s in get_args(schemas.AccountStatus)},
        "remaining_today": values.pop("remaining_today"),
    }
    return schemas.Campaign.model_validate(values)


async def list_campaigns(
    conn: Conn, limit: int, offset: int, status: str | None
) -> tuple[list[schemas.CampaignSummary], int]:
    rows = await conn.fetch(
        """
        SELECT id, owner_id, name, subject, account_ids, pool_tags AS pools, status, start_at,
               tracking, unsubscribe_scope, created_at, updated_at, completed_at
        FROM campaigns WHERE $3::text IS NULL OR status = $3
        ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2
        """,
        limit,
        offset,
        status,
    )
    total: int = await conn.fetchval(
        "SELECT count(*) FROM campaigns WHERE $1::text IS NULL OR status = $1", status
    )
    return [schemas.CampaignSummary.model_validate(dict(r)) for r in rows], total


async def update_campaign_settings(
    conn: Conn, campaign_id: UUID, body: schemas.CampaignUpdate
) -> bool:
    """Set the tracking flag and unsubscribe scope where given.

    The tracking flag changes only on a draft: senders keep a running campaign's templates and
    flag for as long as it runs. False if no campaign was updated (none, or not a draft).
    """
    found = await conn.fetchval(
        """
        UPDATE campaigns
        SET tracking = coalesce($2, tracking),
            unsubscribe_scope = coalesce($3, unsubscribe_scope),
            account_ids = coalesce($4, account_ids),
            pool_tags = coalesce($5, pool_tags),
            updated_at = now()
        WHERE id = $1 AND ($2::boolean IS NULL OR status = 'draft')
        RETURNING true
        """,
        campaign_id,
        body.tracking,
        body.unsubscribe_scope,
        None if body.account_ids is None else list(dict.fromkeys(body.account_ids)),
        body.pools,
    )
    return bool(found)


async def pool_lacks_active_account(conn: Conn, campaign_id: UUID) -> bool:
    """True if the campaign names accounts or tags and none of them is an active account."""
    lacks: bool = await conn.fetchval(
        """
        SELECT (cardinality(c.account_ids) > 0 OR cardinality(c.pool_tags) > 0)
               AND NOT EXISTS (SELECT 1 FROM accounts a
                               WHERE a.status = 'active'
                                 AND (a.id = ANY(c.account_ids) OR a.tags && c.pool_tags))
        FROM campaigns c WHERE c.id = $1
        """,
        campaign_id,
    )
    return bool(lacks)


async def fetch_campaign_status(conn: Conn, campaign_id: UUID) -> str | None:
    status: str | None = await conn.fetchval(
        "SELECT status FROM campaigns WHERE id = $1", campaign_id
    )
    return status


async def start_campaign(conn: Conn, campaign_id: UUID, start_at: datetime | None) -> bool:
    """draft/paused -> running, keeping the stored start_at unless one is given."""
    found = await conn.fetchval(
        """
        UPDATE campaigns
        SET status = 'running', start_at = coalesce($2, start_at), updated_at = now()
        WHERE id = $1 AND status IN ('draft', 'paused')
        RETURNING true
        """,
        campaign_id,
        start_at,
    )
    return bool(found)


async def pause_campaign(conn: Conn, campaign_id: UUID) -> bool:
    """Pause a running campaign."""
    found = await conn.fetchval(
        """
        UPDATE campaigns SET status = 'paused', updated_at = now()
        WHERE id = $1 AND status = 'running'
        RETURNING true
        """,
        campaign_id,
    )
    return bool(found)


async def cancel_campaign(conn: Conn, campaign_id: UUID) -> tuple[int, int] | None:
    """Cancel a draft/running/paused campaign and its unsent messages, in one statement.

    Returns (messages cancelled, reservations released), or None if the campaign is in no
    cancellable status. The messages are locked first (FOR UPDATE re-reads a row a sender
    changed meanwhile), so a message a sender has just claimed (`sending`) is left alone and
    only the messages that really were `assigned` give their unit back, to the UTC day they
    were assigned on.
    """
    row = await conn.fetchrow(
        """
        WITH campaign AS (
            UPDATE campaigns SET status = 'cancelled', updated_at = now()
            WHERE id = $1 AND status IN ('draft', 'running', 'paused')
            RETURNING id
        ), unsent AS (
            SELECT m.id, m.status, m.account_id, m.assigned_at
            FROM messages m JOIN campaign c ON c.id = m.campaign_id
            WHERE m.status IN ('queued', 'assigned', 'deferred')
            FOR UPDATE OF m
        ), cancelled AS (
            -- account_id is cleared because the unit is given back right here: the
            -- dispatcher's sweep gives back units only of cancelled messages that still
            -- carry an account.
            UPDATE messages m
            SET status = 'cancelled', account_id = NULL, next_attempt_at = NULL,
                updated_at = now()
            FROM unsent
            WHERE m.id = unsent.id
            RETURNING unsent.status AS was, unsent.account_id, unsent.assigned_at
        ), usage AS (
            SELECT release_reservations(
                array_agg(account_id), array_agg((assigned_at AT TIME ZONE 'utc')::date),
                array_agg(1)
            ) AS n
            FROM cancelled
            WHERE was = 'assigned' AND account_id IS NOT NULL AND assigned_at IS NOT NULL
        )
        SELECT (SELECT count(*) FROM campaign) AS campaigns,
               (SELECT count(*) FROM cancelled) AS messages,
               (SELECT coalesce(sum(n), 0) FROM usage) AS released
        """,
        campaign_id,
    )
    assert row is not None  # noqa: S101 - an aggregate always returns a row
    if not row["campaigns"]:
        return None
    return row["messages"], int(row["released"])


async def lock_campaign_status(conn: Conn, campaign_id: UUID) -> str | None:
    """The campaign's status, row-locked against a concurrent cancel until commit."""
    status: str | None = await conn.fetchval(
        "SELECT status FROM campaigns WHERE id = $1 FOR NO KEY UPDATE", campaign_id
    )
    return status


async def reopen_campaign(conn: Conn, campaign_id: UUID) -> None:
    """Run a completed campaign again: new recipients arrived."""
    await conn.execute(
        """
        UPDATE campaigns SET status = 'running', completed_at = NULL, updated_at = now()
        WHERE id = $1 AND status = 'completed'
        """,
        campaign_id,
    )


async def count_queued(conn: Conn, campaign_id: UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM messages WHERE campaign_id = $1 AND status = 'queued'", campaign_id
    )
    return count


async def campaign_feedback(conn: Conn, campaign_id: UUID) -> schemas.Feedback:
    """Bounces, complaints and replies of the campaign's sent messages."""
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'sent') AS sent, "  # noqa: S608 - a constant
        + _FEEDBACK_COUNTS
        + " FROM messages WHERE campaign_id = $1",
        campaign_id,
    )
    assert row is not None  # noqa: S101 - an aggregate always returns a row
    return schemas.Feedback.from_counts(dict(row))


# --- messages -----------------------------------------------------------------------------


async def suppressed_among(conn: Conn, campaign_id: UUID, emails: Sequence[str]) -> set[str]:
    """The given addresses suppressed (globally or for this campaign) and not expired."""
    rows = await conn.fetch(
        """
        SELECT e.email FROM unnest($2::text[]) AS e (email)
        WHERE EXISTS (
            SELECT 1 FROM suppressions s
            WHERE lower(s.email) = lower(e.email)
              AND (s.campaign_id IS NULL OR s.campaign_id = $1)
              AND (s.expires_at IS NULL OR s.expires_at > now())
        )
        """,
        campaign_id,
        list(emails),
    )
    return {r["email"] for r in rows}


async def insert_messages(
    conn: Conn,
    campaign_id: UUID,
    emails: Sequence[str],
    names: Sequence[str | None],
    variables_json: Sequence[str],
    traceparent: str | None = None,
) -> set[str]:
    """Queue messages in the given order; returns the addresses that were not there yet.

    ``traceparent``: the enqueue's trace context, kept so that the dispatcher and sender
    continue its trace (None when tracing is off or the trace is not sampled).
    """
    rows = await conn.fetch(
        """
        INSERT INTO messages (campaign_id, email, name, variables, traceparent)
        SELECT $1, r.email, r.name, r.variables::jsonb, $5
        FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY
             AS r (email, name, variables, position)
        ORDER BY r.position
        ON CONFLICT (campaign_id, lower(email)) WHERE NOT transactional DO NOTHING
        RETURNING email
        """,
        campaign_id,
        list(emails),
        list(names),
        list(variables_json),
        traceparent,
    )
    return {r["email"] for r in rows}


async def count_messages_by_status(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM messages GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def count_account_messages_by_status(conn: Conn) -> list[schemas.AccountQueue]:
    """Per account, its messages in each status (messages not tied to an account left out)."""
    rows = await conn.fetch(
        """
        SELECT a.id AS account_id, a.name, jsonb_object_agg(m.status, m.n) AS by_status
        FROM (SELECT account_id, status, count(*) AS n FROM messages
              WHERE account_id IS NOT NULL GROUP BY 1, 2) m
        JOIN accounts a ON a.id = m.account_id
        GROUP BY a.id, a.name ORDER BY a.name, a.id
        """
    )
    return [schemas.AccountQueue.model_validate(dict(r)) for r in rows]


async def delete_failed_messages(conn: Conn, campaign_id: UUID | None) -> int:
    removed = await conn.fetchval(
        """
        WITH gone AS (
            DELETE FROM messages
            WHERE status = 'failed' AND ($1::uuid IS NULL OR campaign_id = $1)
            RETURNING 1
        )
        SELECT count(*) FROM gone
        """,
        campaign_id,
    )
    return int(removed)


# --- stats --------------------------------------------------------------------------------


async def count_campaigns_by_status(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM campaigns GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def usage_today(conn: Conn) -> list[schemas.AccountToday]:
    """Today's (UTC) usage against the effective limit of every account not archived."""
    rows = await conn.fetch(_ACCOUNT_SELECT + " WHERE a.status <> 'archived' ORDER BY a.name, a.id")
    return [
        schemas.AccountToday(account_id=a.id, name=a.name, status=a.status, usage=a.today)
        for a in map(_account, rows)
    ]


# --- engagement ---------------------------------------------------------------------------

# The statements below splice in these two constants (never input, hence the noqa S608).
# Each first names the campaigns it covers in a CTE `scope (id)`. Per campaign, one row per
# message sent and one per tracking event: the shape _ENGAGEMENT_COUNTS reads.
_ENGAGEMENT_ROWS = """
    engagement_rows AS (
        SELECT campaign_id, account_id, 'sent' AS type, id AS message_id, false AS machine
        FROM messages
        WHERE status = 'sent' AND campaign_id IN (SELECT id FROM scope)
        UNION ALL
        SELECT campaign_id, account_id, type, message_id,
               coalesce((data->>'machine')::boolean, false)
        FROM events
        WHERE type IN ('opened', 'clicked', 'unsubscribed')
          AND campaign_id IN (SELECT id FROM scope)
    )
"""
# The counters of schemas.Engagement, over a group of engagement_rows.
_ENGAGEMENT_COUNTS = """
    count(*) FILTER (WHERE type = 'sent') AS sent,
    count(*) FILTER (WHERE type = 'opened') AS opens,
    count(DISTINCT message_id) FILTER (WHERE type = 'opened') AS unique_opens,
    count(*) FILTER (WHERE type = 'opened' AND NOT machine) AS human_opens,
    count(DISTINCT message_id) FILTER (WHERE type = 'opened' AND NOT machine)
        AS unique_human_opens,
    count(*) FILTER (WHERE type = 'clicked') AS clicks,
    count(DISTINCT message_id) FILTER (WHERE type = 'clicked') AS unique_clicks,
    count(*) FILTER (WHERE type = 'clicked' AND NOT machine) AS human_clicks,
    count(DISTINCT message_id) FILTER (WHERE type = 'clicked' AND NOT machine)
        AS unique_human_clicks,
    count(DISTINCT message_id) FILTER (WHERE type = 'unsubscribed') AS unsubscribes
"""


def _account_engagement(row: asyncpg.Record) -> schemas.AccountEngagement:
    return schemas.AccountEngagement(
        account_id=row["account_id"],
        name=row["name"],
        engagement=schemas.Engagement.from_counts(dict(row)),
    )


async def campaign_engagement(
    conn: Conn, campaign_id: UUID
) -> tuple[schemas.Engagement, list[schemas.AccountEngagement]]:
    """A campaign's engagement, overall and for each account that sent its messages."""
    rows = await conn.fetch(
        "WITH scope (id) AS (SELECT $1::uuid), "  # noqa: S608 - spliced constants only
        + _ENGAGEMENT_ROWS
        + """
        SELECT grouping(e.account_id) = 1 AS overall, e.account_id, a.name,
        """
        + _ENGAGEMENT_COUNTS
        + """
        FROM engagement_rows e LEFT JOIN accounts a ON a.id = e.account_id
        GROUP BY GROUPING SETS ((), (e.account_id, a.name))
        ORDER BY overall DESC, a.name, e.account_id
        """,
        campaign_id,
    )
    # Grouping by nothing yields one row even when there is nothing to count.
    overall, *by_account = rows
    return schemas.Engagement.from_counts(dict(overall)), [
        _account_engagement(r) for r in by_account if r["account_id"] is not None
    ]


async def recent_engagement(
    conn: Conn, limit: int
) -> tuple[list[schemas.AccountEngagement], list[schemas.CampaignEngagement]]:
    """Engagement of the `limit` newest campaigns that sent anything: by account, by campaign.

    Both lists cover the same campaigns, so what the accounts sent adds up to what the
    campaigns sent, and the cost stays bounded however long the history.
    """
    rows = await conn.fetch(
        "WITH scope (id) AS ("  # noqa: S608 - spliced constants only
        + """
            SELECT c.id FROM campaigns c
            WHERE EXISTS (SELECT 1 FROM messages m
                          WHERE m.campaign_id = c.id AND m.status = 'sent')
            ORDER BY c.created_at DESC, c.id DESC
            LIMIT $1
        ),
        """
        + _ENGAGEMENT_ROWS
        + """
        SELECT grouping(e.campaign_id) = 0 AS by_campaign, e.campaign_id, c.name AS campaign,
               c.status, e.account_id, a.name,
        """
        + _ENGAGEMENT_COUNTS
        + """
        FROM engagement_rows e
        JOIN campaigns c ON c.id = e.campaign_id
        LEFT JOIN accounts a ON a.id = e.account_id
        GROUP BY GROUPING SETS ((e.campaign_id, c.name, c.status, c.created_at),
                                (e.account_id, a.name))
        ORDER BY by_campaign, a.name, e.account_id, c.created_at DESC, e.campaign_id DESC
        """,
        limit,
    )
    by_account = [
        _account_engagement(r) for r in rows if not r["by_campaign"] and r["account_id"] is not None
    ]
    by_campaign = [
        schemas.CampaignEngagement(
            campaign_id=r["campaign_id"],
            name=r["campaign"],
            status=r["status"],
            engagement=schemas.Engagement.from_counts(dict(r)),
        )
        for r in rows
        if r["by_campaign"]
    ]
    return by_account, by_campaign


# --- suppressions -------------------------------------------------------------------------

_SUPPRESSION_COLUMNS = """
    id, email, campaign_id, reason, source, created_at, expires_at,
    (expires_at IS NULL OR expires_at > now()) AS active
"""
# The unique index suppressions_scope_key is on (lower(email), coalesce(campaign_id, _NO_SCOPE)).
_SAME_SCOPE = """
    coalesce(s.campaign_id, '00000000-0000-0000-0000-000000000000'::uuid)
    = coalesce(r.campaign_id, '00000000-0000-0000-0000-000000000000'::uuid)
"""


def _param(args: list[Any], value: Any) -> str:
    """The placeholder of `value`, appended to a statement's `args`."""
    args.append(value)
    return f"${len(args)}"


async def _newest_first(
    conn: Conn,
    select: str,
    at: str,
    where: str,
    args: list[Any],
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[asyncpg.Record], bool]:
    """A keyset page of `select` (a SELECT ... FROM) ordered by (`at`, id) descending.

    `where` and its `args` choose the rows; the page starts after the (`at`, id) position
    given. Returns the page and whether more follow.
    """
    if after is not None:
        where += f" AND ({at}, id) < ({_param(args, after[0])}, {_param(args, after[1])})"
    rows = await conn.fetch(
        f"{select} WHERE {where} ORDER BY {at} DESC, id DESC LIMIT {_param(args, limit + 1)}",
        *args,
    )
    return rows[:limit], len(rows) > limit


def _suppression_where(filters: schemas.SuppressionFilter, args: list[Any]) -> str:
    """The condition for the filters given; their values are appended to `args`."""
    clauses: list[str] = []
    if filters.email is not None:
        clauses.append(f"lower(email) = lower({_param(args, filters.email)})")
    if filters.q is not None:
        clauses.append(f"strpos(lower(email), lower({_param(args, filters.q)})) > 0")
    if filters.reason is not None:
        clauses.append(f"reason = {_param(args, filters.reason)}")
    if filters.source is not None:
        clauses.append(f"starts_with(source, {_param(args, filters.source)})")
    if filters.campaign_id is not None:
        clauses.append(f"campaign_id = {_param(args, filters.campaign_id)}")
    if filters.scope is not None:
        clauses.append(f"campaign_id IS {'' if filters.scope == 'global' else 'NOT '}NULL")
    if filters.active is not None:
        active = "(expires_at IS NULL OR expires_at > now())"
        clauses.append(active if filters.active else f"NOT {active}")
    if filters.created_after is not None:
        clauses.append(f"created_at >= {_param(args, filters.created_after)}")
    if filters.created_before is not None:
        clauses.append(f"created_at < {_param(args, filters.created_before)}")
    return " AND ".join(clauses) or "true"


def _suppression(row: asyncpg.Record) -> schemas.Suppression:
    return schemas.Suppression.model_validate(dict(row))


async def list_suppressions(
    conn: Conn,
    filters: schemas.SuppressionFilter,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[schemas.Suppression], bool]:
    """A page of matching suppressions, newest first, after the given (created_at, id).

    Returns the page and whether more follow.
    """
    args: list[Any] = []
    where = _suppression_where(filters, args)
    select = f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions"  # noqa: S608 - a constant
    rows, more = await _newest_first(conn, select, "created_at", where, args, limit, after)
    return [_suppression(r) for r in rows], more


async def suppression_rows(
    conn: Conn, filters: schemas.SuppressionFilter
) -> AsyncIterator[asyncpg.Record]:
    """Every matching suppression, newest first, read through a server-side cursor.

    The caller holds a transaction open while it iterates.
    """
    args: list[Any] = []
    where = _suppression_where(filters, args)
    async for row in conn.cursor(
        f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions WHERE {where} "  # noqa: S608 - $n values
        "ORDER BY created_at DESC, id DESC",
        *args,
        prefetch=_EXPORT_PREFETCH,
    ):
        yield row


_EXPORT_PREFETCH = 2000


async def fetch_suppression(conn: Conn, suppression_id: int) -> schemas.Suppression | None:
    row = await conn.fetchrow(
        f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions WHERE id = $1",  # noqa: S608 - a constant
        suppression_id,
    )
    return None if row is None else _suppression(row)


async def fetch_suppression_of(
    conn: Conn, email: str, campaign_id: UUID | None
) -> schemas.Suppression | None:
    """The suppression of this address in this scope (NULL campaign: the global one)."""
    row = await conn.fetchrow(
        f"SELECT {_SUPPRESSION_COLUMNS} FROM suppressions "  # noqa: S608 - a constant
        """
        WHERE lower(email) = lower($1)
          AND coalesce(campaign_id, '00000000-0000-0000-0000-000000000000'::uuid)
              = coalesce($2::uuid, '00000000-0000-0000-0000-000000000000'::uuid)
        """,
        email,
        campaign_id,
    )
    return None if row is None else _suppression(row)


async def suppress_address(
    conn: Conn,
    email: str,
    campaign_id: UUID | None,
    reason: str,
    source: str,
    expires_at: datetime | None,
) -> int:
    """Suppress an address and cancel its unsent messages in that scope; returns how many."""
    cancelled: int = await conn.fetchval(
        "SELECT suppress_address($1, $2, $3, $4, $5)",
        email,
        campaign_id,
        reason,
        source,
        expires_at,
    )
    return cancelled


async def delete_suppression(conn: Conn, suppression_id: int) -> bool:
    """Remove a suppression; False if there is none with this id."""
    found = await conn.fetchval(
        "DELETE FROM suppressions WHERE id = $1 RETURNING true", suppression_id
    )
    return bool(found)


async def existing_campaigns(conn: Conn, campaign_ids: Sequence[UUID]) -> set[UUID]:
    """The given ids that name a campaign."""
    rows = await conn.fetch(
        "SELECT id FROM campaigns WHERE id = ANY($1::uuid[])", list(campaign_ids)
    )
    return {r["id"] for r in rows}


async def actively_suppressed(
    conn: Conn, emails: Sequence[str], campaign_ids: Sequence[UUID | None]
) -> set[int]:
    """Positions (0-based) of the (address, scope) pairs that have an unexpired suppression."""
    rows = await conn.fetch(
        """
        SELECT r.position - 1 AS position
        FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS r (email, campaign_id, position)
        WHERE EXISTS (
            SELECT 1 FROM suppressions s
            WHERE lower(s.email) = lower(r.email)
              AND (s.expires_at IS NULL OR s.expires_at > now())
              AND """  # noqa: S608 - a spliced constant only
        + _SAME_SCOPE
        + ")",
        list(emails),
        list(campaign_ids),
    )
    return {r["position"] for r in rows}


async def suppress_many(
    conn: Conn,
    emails: Sequence[str],
    campaign_ids: Sequence[UUID | None],
    reasons: Sequence[str],
    expires_at: Sequence[datetime | None],
    source: str,
) -> int:
    """Suppress each (address, scope) given, at most once each, and cancel their unsent messages.

    suppress_addresses() (migration 0004) holds the rules. Returns the number cancelled.
    """
    cancelled = await conn.fetchval(
        "SELECT suppress_addresses($1::text[], $2::uuid[], $3::text[], $4, $5::timestamptz[])",
        list(emails),
        list(campaign_ids),
        list(reasons),
        source,
        list(expires_at),
    )
    return int(cancelled or 0)


# --- inbound reports ----------------------------------------------------------------------

_INBOUND_REPORT_COLUMNS = """
    id, account_id, kind, parser, sender, subject, size, truncated, matched, problem, details,
    received_at, published_at IS NOT NULL AS published, raw IS NOT NULL AS has_raw
"""


def _inbound_report_where(filters: schemas.InboundReportFilter, args: list[Any]) -> str:
    """The condition for the filters given; their values are appended to `args`."""
    clauses: list[str] = []
    if filters.account_id is not None:
        clauses.append(f"account_id = {_param(args, filters.account_id)}")
    if filters.kind is not None:
        clauses.append(f"kind = {_param(args, filters.kind)}")
    if filters.matched is not None:
        clauses.append("matched > 0" if filters.matched else "matched = 0")
    if filters.problem is not None:
        clauses.append(f"problem IS {'NOT ' if filters.problem else ''}NULL")
    if filters.received_after is not None:
        clauses.append(f"received_at >= {_param(args, filters.received_after)}")
    if filters.received_before is not None:
        clauses.append(f"received_at < {_param(args, filters.received_before)}")
    return " AND ".join(clauses) or "true"


def _inbound_report(row: asyncpg.Record) -> schemas.InboundReport:
    return schemas.InboundReport.model_validate(dict(row))


async def list_inbound_reports(
    conn: Conn,
    filters: schemas.InboundReportFilter,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[schemas.InboundReport], bool]:
    """A page of matching reports, newest first, after the given (received_at, id).

    Returns the page and whether more follow.
    """
    args: list[Any] = []
    where = _inbound_report_where(filters, args)
    select = f"SELECT {_INBOUND_REPORT_COLUMNS} FROM inbound_reports"  # noqa: S608 - a constant
    rows, more = await _newest_first(conn, select, "received_at", where, args, limit, after)
    return [_inbound_report(r) for r in rows], more


async def fetch_inbound_report(conn: Conn, report_id: int) -> schemas.InboundReport | None:
    row = await conn.fetchrow(
        f"SELECT {_INBOUND_REPORT_COLUMNS} FROM inbound_reports WHERE id = $1",  # noqa: S608 - a constant
        report_id,
    )
    return None if row is None else _inbound_report(row)


async def fetch_inbound_report_raw(conn: Conn, report_id: int) -> asyncpg.Record | None:
    """The kept bytes of a report (raw: NULL if none were kept) and its kind; None: no report."""
    return await conn.fetchrow("SELECT kind, raw FROM inbound_reports WHERE id = $1", report_id)


# --- idempotency --------------------------------------------------------------------------


async def claim_idempotency_key(conn: Conn, principal: str, key: str, request_hash: bytes) -> bool:
    """Reserve a key for this request; False if another request holds it already.

    A concurrent request with the same key waits here until the first one commits.
    """
    claimed = await conn.fetchval(
        """
        INSERT INTO idempotency_keys (principal, key, request_hash, status_code, response)
        VALUES ($1, $2, $3, 0, '{}')
        ON CONFLICT (principal, key) DO NOTHING
        RETURNING true
        """,
        principal,
        key,
        request_hash,
    )
    return bool(claimed)


async def fetch_idempotent_response(conn: Conn, principal: str, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        SELECT request_hash, status_code, response FROM idempotency_keys
        WHERE principal = $1 AND key = $2
        """,
        principal,
        key,
    )


async def store_idempotent_response(
    conn: Conn, principal: str, key: str, status_code: int, response: dict[str, Any]
) -> None:
    await conn.execute(
        """
        UPDATE idempotency_keys SET status_code = $3, response = $4
        WHERE principal = $1 AND key = $2
        """,
        principal,
        key,
        status_code,
        response,
    )


# --- uncertain messages -------------------------------------------------------------------

_UNCERTAIN_COLUMNS = (
    "id, campaign_id, account_id, email, message_id, attempts, sender_replica, last_code, "
    "last_error, updated_at AS flagged_at"
)


def _uncertain_where(filters: schemas.UncertainFilter, args: list[Any]) -> str:
    """The condition for the filters given; their values are appended to `args`."""
    clauses = ["status = 'uncertain'"]
    if filters.campaign_id is not None:
        clauses.append(f"campaign_id = {_param(args, filters.campaign_id)}")
    if filters.account_id is not None:
        clauses.append(f"account_id = {_param(args, filters.account_id)}")
    if filters.sender_replica is not None:
        clauses.append(f"sender_replica = {_param(args, filters.sender_replica)}")
    if filters.flagged_after is not None:
        clauses.append(f"updated_at >= {_param(args, filters.flagged_after)}")
    if filters.flagged_before is not None:
        clauses.append(f"updated_at < {_param(args, filters.flagged_before)}")
    return " AND ".join(clauses)


async def list_uncertain(
    conn: Conn,
    filters: schemas.UncertainFilter,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[schemas.UncertainMessage], bool]:
    """A page of uncertain messages, newest first, after the given (flagged_at, id)."""
    args: list[Any] = []
    where = _uncertain_where(filters, args)
    select = f"SELECT {_UNCERTAIN_COLUMNS} FROM messages"  # noqa: S608 - a constant
    rows, more = await _newest_first(conn, select, "updated_at", where, args, limit, after)
    return [schemas.UncertainMessage.model_validate(dict(r)) for r in rows], more


async def resolve_uncertain(
    conn: Conn,
    resolution: schemas.Resolution,
    message_ids: list[int] | None,
    filters: schemas.UncertainFilter | None,
    resolved_by: str,
    note: str | None,
) -> list[int]:
    """Resolve the chosen uncertain messages; returns the ids that were resolved.

    `sent` marks each delivered (sent_at: when it became uncertain, the nearest known time);
    `resend` puts it back to `queued`, keeping its Message-ID so a receiving server or mail
    client can tell the copies apart, and runs its campaign again if it had completed. One
    statement: the messages, a resolution row and an `uncertain-resolved` event each.
    """
    args: list[Any] = [resolution, resolved_by, note]
    where = _uncertain_where(filters or schemas.UncertainFilter(), args)
    if message_ids is not None:
        where += f" AND id = ANY({_param(args, message_ids)}::bigint[])"
    rows = await conn.fetch(
        f"""
        WITH target AS (
            SELECT id FROM messages WHERE {where} FOR NO KEY UPDATE
        ), resolved AS (
            UPDATE messages m
            SET status = CASE WHEN $1 = 'sent' THEN 'sent' ELSE 'queued' END,
                sent_at = CASE WHEN $1 = 'sent' THEN m.updated_at ELSE m.sent_at END,
                account_id = CASE WHEN $1 = 'sent' THEN m.account_id END,
                assigned_at = CASE WHEN $1 = 'sent' THEN m.assigned_at END,
                next_attempt_at = NULL,
                updated_at = now()
            FROM target WHERE m.id = target.id AND m.status = 'uncertain'
            RETURNING m.id, m.campaign_id, m.account_id
        ), recorded AS (
            INSERT INTO uncertain_resolutions (message_id, resolution, resolved_by, note)
            SELECT id, $1, $2, $3 FROM resolved
        ), logged AS (
            INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data)
            SELECT now(), 'uncertain-resolved', campaign_id, id, account_id,
                   jsonb_build_object('resolution', $1::text, 'by', $2::text)
            FROM resolved
        ), reopened AS (
            UPDATE campaigns c SET status = 'running', completed_at = NULL, updated_at = now()
            WHERE $1 = 'resend' AND c.status = 'completed'
              AND c.id IN (SELECT campaign_id FROM resolved)
        )
        SELECT id FROM resolved ORDER BY id
        """,  # noqa: S608 - the condition is built from constants; values are parameters
        *args,
    )
    return [r["id"] for r in rows]


async def list_uncertain_resolutions(
    conn: Conn,
    message_id: int | None,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[schemas.UncertainResolution], bool]:
    """A page of resolutions, newest first, after the given (resolved_at, id)."""
    args: list[Any] = []
    where = "true" if message_id is None else f"message_id = {_param(args, message_id)}"
    select = (
        "SELECT id, message_id, resolution, resolved_by, resolved_at, note "
        "FROM uncertain_resolutions"
    )
    rows, more = await _newest_first(conn, select, "resolved_at", where, args, limit, after)
    return [schemas.UncertainResolution.model_validate(dict(r)) for r in rows], more
