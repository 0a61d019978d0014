"""SQL of sender accounts: settings, secrets, tags and health."""

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, get_args
from uuid import UUID

from mailfleet_common.db import Conn
from mailfleet_common.oauth import CONSENT_NEEDED
from pydantic import BaseModel, ConfigDict

from mailfleet_api import schemas
from mailfleet_api.queries.columns import field_expressions, json_object, select_list
from mailfleet_api.queries.pages import keyset_page
from mailfleet_api.queries.webhooks import record_account_status
from mailfleet_api.schemas.oauth import OAuthStatus

# An account has two shapes, each written once:
# - AccountRow, its writable columns: a request becomes one (routes.accounts.account_row) and
#   its fields, in order, are the column list of the statements that write or lock an account;
# - schemas.Account, the answer: its fields (and those of its nested ImapSettings and
#   AccountUsage) are the select list of ACCOUNT_SELECT, so a row validates into it as is.


class AccountRow(BaseModel):
    """The columns of an account that the API writes, passwords encrypted."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: schemas.AccountKind
    auth_kind: schemas.AuthKind
    smtp_host: str | None
    smtp_port: int | None
    smtp_tls: schemas.SmtpTls | None
    smtp_username: str | None
    smtp_password_enc: bytes | None
    from_email: str
    from_name: str | None
    daily_limit: int
    min_gap_ms: int
    warmup_started_on: date | None
    warmup_initial: int
    warmup_increment: int
    status: schemas.AccountStatus
    status_reason: str | None
    imap_host: str | None
    imap_port: int | None
    imap_tls: schemas.SmtpTls | None
    imap_username: str | None
    imap_password_enc: bytes | None
    imap_folder: str
    imap_processed_folder: str | None
    tags: list[str]

    def values(self) -> list[Any]:
        """The statement arguments, in the order of ACCOUNT_COLUMNS."""
        return [getattr(self, column) for column in ACCOUNT_COLUMNS]


ACCOUNT_COLUMNS = tuple(AccountRow.model_fields)
_COLUMN_LIST = ", ".join(ACCOUNT_COLUMNS)

# Today (UTC) and its usage row, beside each account `a`.
ACCOUNTS_TODAY = """
    FROM accounts a
    CROSS JOIN (SELECT (now() AT TIME ZONE 'utc')::date AS day) d
    LEFT JOIN account_daily_usage u ON u.account_id = a.id AND u.day = d.day
"""
USAGE_TODAY = json_object(
    field_expressions(
        schemas.AccountUsage,
        "coalesce(u.{}, 0)",
        {"day": "d.day", "effective_limit": "account_effective_limit(a, d.day)"},
    )
)
_IMAP = json_object(
    field_expressions(
        schemas.ImapSettings, "a.imap_{}", {"has_password": "a.imap_password_enc IS NOT NULL"}
    )
)
_OAUTH = json_object(
    field_expressions(
        OAuthStatus,
        "o.{}",
        {
            "credential": "CASE WHEN o.refresh_token_enc IS NOT NULL THEN 'refresh_token' "
            "ELSE 'service_account' END",
            "access_token_expires_at": "o.access_expires_at",
        },
    )
)
_ACCOUNT = field_expressions(
    schemas.Account,
    "a.{}",
    {
        "has_password": "a.smtp_password_enc IS NOT NULL",
        "warmup_enabled": "a.warmup_started_on IS NOT NULL",
        "rates_since": "nullif(a.rates_since, '-infinity')",
        "held_until": "CASE WHEN account_held(a) THEN a.held_until END",
        "held_reason": "CASE WHEN account_held(a) THEN a.held_reason END",
        "imap": f"CASE WHEN a.imap_host IS NOT NULL THEN {_IMAP} END",
        "oauth": f"(SELECT {_OAUTH} FROM account_oauth o WHERE o.account_id = a.id)",  # noqa: S608
        "today": USAGE_TODAY,
    },
)
ACCOUNT_SELECT = f"SELECT {select_list(_ACCOUNT)} {ACCOUNTS_TODAY}"


async def fetch_account(conn: Conn, account_id: UUID) -> schemas.Account | None:
    row = await conn.fetchrow(ACCOUNT_SELECT + " WHERE a.id = $1", account_id)
    return None if row is None else schemas.Account.model_validate(dict(row))


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
    return [schemas.Account.model_validate(dict(r)) for r in rows], more


def _placeholders(first: int) -> str:
    """``$first, $first+1, ...``: one per column of AccountRow."""
    return ", ".join(f"${first + n}" for n in range(len(ACCOUNT_COLUMNS)))


_INSERT = f"INSERT INTO accounts ({_COLUMN_LIST}) VALUES ({_placeholders(1)}) RETURNING id"  # noqa: S608
_LOCK = f"SELECT {_COLUMN_LIST} FROM accounts WHERE id = $1 FOR UPDATE"  # noqa: S608
# $1 the id, then the columns, then whether the rates start afresh.
_UPDATE = f"""
    UPDATE accounts
    SET ({_COLUMN_LIST}) = ROW({_placeholders(2)}),
        rates_since = CASE WHEN ${len(ACCOUNT_COLUMNS) + 2} THEN now() ELSE rates_since END,
        updated_at = now()
    WHERE id = $1
"""  # noqa: S608 - column names from AccountRow only


async def insert_account(conn: Conn, row: AccountRow) -> UUID:
    """Create an account; returns its id."""
    account_id: UUID = await conn.fetchval(_INSERT, *row.values())
    return account_id


async def lock_account(conn: Conn, account_id: UUID) -> AccountRow | None:
    """The writable columns of an account, row-locked until the transaction ends."""
    row = await conn.fetchrow(_LOCK, account_id)
    return None if row is None else AccountRow.model_validate(dict(row))


async def update_account(
    conn: Conn, account_id: UUID, row: AccountRow, restart_rates: bool
) -> None:
    """Write every writable column of an account.

    restart_rates: bounce and complaint rates count only sends from now on.
    """
    await conn.execute(_UPDATE, account_id, *row.values(), restart_rates)


async def has_usable_oauth(conn: Conn, account_id: UUID) -> bool:
    """Whether the account has OAuth2 credentials that the provider has not refused."""
    found = await conn.fetchval(
        "SELECT consent = 'granted' FROM account_oauth WHERE account_id = $1", account_id
    )
    return bool(found)


async def resume_after_consent(conn: Conn, account_id: UUID, reason: str) -> bool:
    """Make active again an account paused for consent ("consent needed: ..."), as a resume.

    Its bounce and complaint rates start afresh, as when an operator resumes it, and the
    'account-resumed' event is recorded. False if it was not paused for consent.
    """
    resumed = await conn.fetchval(
        """
        UPDATE accounts
        SET status = 'active', status_reason = NULL, rates_since = now(), updated_at = now()
        WHERE id = $1 AND status = 'paused' AND starts_with(status_reason, $2)
        RETURNING true
        """,
        account_id,
        CONSENT_NEEDED,
    )
    if resumed:
        await record_account_status(conn, account_id, "active", "paused", reason)
    return bool(resumed)


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


class AccountSecrets(BaseModel):
    """An account's encrypted SMTP and IMAP passwords, and what names them to an operator."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    name: str
    smtp_password_enc: bytes | None
    imap_password_enc: bytes | None
    imap_host: str | None
    imap_username: str | None


_SECRETS = ", ".join(AccountSecrets.model_fields)


async def fetch_account_secrets(conn: Conn) -> list[AccountSecrets]:
    """Every account with an encrypted SMTP or IMAP password, row-locked for re-encryption."""
    rows = await conn.fetch(
        f"""
        SELECT {_SECRETS} FROM accounts
        WHERE smtp_password_enc IS NOT NULL OR imap_password_enc IS NOT NULL
        ORDER BY id FOR UPDATE
        """  # noqa: S608 - column names from AccountSecrets only
    )
    return [AccountSecrets.model_validate(dict(r)) for r in rows]


async def set_account_secrets(conn: Conn, secrets: AccountSecrets) -> None:
    """Store the account's encrypted passwords as given (re-encrypted with another key)."""
    await conn.execute(
        "UPDATE accounts SET smtp_password_enc = $2, imap_password_enc = $3 WHERE id = $1",
        secrets.id,
        secrets.smtp_password_enc,
        secrets.imap_password_enc,
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


class OAuthSecrets(BaseModel):
    """An OAuth2 account's encrypted credentials and cached access token, and its name."""

    model_config = ConfigDict(frozen=True)

    account_id: UUID
    name: str
    refresh_token_enc: bytes | None
    service_account_key_enc: bytes | None
    access_token_enc: bytes | None


async def fetch_oauth_secrets(conn: Conn) -> list[OAuthSecrets]:
    """Every account's OAuth2 secrets, row-locked until the transaction ends."""
    rows = await conn.fetch(
        """
        SELECT o.account_id, a.name, o.refresh_token_enc, o.service_account_key_enc,
               o.access_token_enc
        FROM account_oauth o JOIN accounts a ON a.id = o.account_id
        ORDER BY o.account_id FOR NO KEY UPDATE OF o
        """
    )
    return [OAuthSecrets.model_validate(dict(r)) for r in rows]


async def forget_oauth_secrets(
    conn: Conn, account_id: UUID, credentials: bool, reason: str
) -> None:
    """Drop OAuth2 secrets no key can decrypt: the cached access token, or all credentials.

    Without credentials the account is no OAuth2 account any more until connected again: an
    active one is paused with `reason` (consent needed), and resumes once connected.
    """
    if not credentials:
        await conn.execute(
            """
            UPDATE account_oauth SET access_token_enc = NULL, access_expires_at = NULL,
                                     updated_at = now()
            WHERE account_id = $1
            """,
            account_id,
        )
        return
    await conn.execute("DELETE FROM account_oauth WHERE account_id = $1", account_id)
    await conn.execute(
        """
        UPDATE accounts SET status = 'paused', status_reason = $2, updated_at = now()
        WHERE id = $1 AND status = 'active'
        """,
        account_id,
        reason,
    )


# Counters of schemas.Feedback over a set of messages.
FEEDBACK_COUNTS = """
    count(*) FILTER (WHERE bounce = 'hard') AS hard_bounces,
    count(*) FILTER (WHERE bounce = 'soft') AS soft_bounces,
    count(complained_at) AS complaints,
    count(replied_at) AS replies
"""


_MAILBOX_POSITION = (
    "folder",
    "uidvalidity",
    "last_uid",
    "polled_at",
    "last_error",
    "history_id",
    "backoff_until",
)


async def account_health(conn: Conn, account_id: UUID, window: int) -> schemas.AccountHealth | None:
    """An account's feedback and the reading of its mailbox; None: no account.

    The feedback is on the account's `window` newest sends since rates_since; the mailbox
    block is there only if the account has IMAP settings or is read through the Gmail API.
    """
    row = await conn.fetchrow(
        """
        SELECT a.id AS account_id, a.status, a.status_reason,
               nullif(a.rates_since, '-infinity') AS rates_since,
               a.imap_host IS NOT NULL OR a.kind = 'gmail-api' AS reads_mailbox,
               -- UIDVALIDITY 0: the bouncer has not read the mailbox yet (only failed to).
               CASE WHEN a.kind = 'gmail-api' THEN 'INBOX' ELSE nullif(m.folder, '') END
                   AS folder,
               nullif(m.uidvalidity, 0) AS uidvalidity,
               CASE WHEN m.uidvalidity <> 0 THEN m.last_uid END AS last_uid,
               coalesce(g.polled_at, m.polled_at) AS polled_at,
               CASE WHEN a.kind = 'gmail-api' THEN g.last_error ELSE m.last_error END
                   AS last_error,
               g.history_id, g.backoff_until, r.reports, f.*
        FROM accounts a
        LEFT JOIN mailbox_checkpoints m ON m.account_id = a.id
        LEFT JOIN gmail_mailboxes g ON g.account_id = a.id
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
