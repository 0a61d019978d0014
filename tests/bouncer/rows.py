"""Rows and returned mail for the bouncer tests: accounts, sent messages, DSNs, ARF, replies."""

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from uuid import UUID

from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import Conn
from mailfleet_common.oauth import import_refresh_token

from tests.bouncer.servers import Mailbox


async def insert_account(
    db: Conn,
    *,
    from_email: str = "sender1@fleet.test",
    smtp_port: int = 2525,
    imap: dict[str, Any] | None = None,
    box: SecretBox | None = None,
    status: str = "active",
    daily_limit: int = 1000,
) -> UUID:
    """An SMTP account; with `imap` (host, port, username, password, ...) its mailbox is read."""
    imap = imap or {}
    password = imap.get("password")
    account_id: UUID = await db.fetchval(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit,
                              status, imap_host, imap_port, imap_tls, imap_username,
                              imap_password_enc, imap_folder, imap_processed_folder)
        VALUES ($1, '127.0.0.1', $2, 'none', $1, $3, $4, $5, $6, $7, $8, $9,
                coalesce($10, 'INBOX'), $11)
        RETURNING id
        """,
        from_email,
        smtp_port,
        daily_limit,
        status,
        imap.get("host"),
        imap.get("port"),
        imap.get("tls", "none") if imap else None,
        imap.get("username"),
        box.encrypt(password) if box is not None and password is not None else None,
        imap.get("folder"),
        imap.get("processed_folder"),
    )
    return account_id


async def insert_imap_account(
    db: Conn, box: SecretBox, mailbox: Mailbox, processed_folder: str | None = None
) -> UUID:
    """An account sending as `mailbox`'s address, whose returns are read from that mailbox."""
    return await insert_account(
        db,
        from_email=mailbox.address,
        box=box,
        imap={
            "host": mailbox.host,
            "port": mailbox.imap_port,
            "username": mailbox.address,
            "password": mailbox.password,
            "processed_folder": processed_folder,
        },
    )


async def insert_gmail_account(
    db: Conn, box: SecretBox, address: str, refresh_token: str, *, status: str = "active"
) -> UUID:
    """A Gmail-API account of `address`, with a Google refresh token; read through the API."""
    account_id: UUID = await db.fetchval(
        """
        INSERT INTO accounts (name, kind, auth_kind, from_email, daily_limit, status)
        VALUES ($1, 'gmail-api', 'oauth2', $1, 1000, $2) RETURNING id
        """,
        address,
        status,
    )
    await import_refresh_token(db, box, account_id, "google", refresh_token)
    return account_id


async def insert_xoauth2_account(
    db: Conn, box: SecretBox, mailbox: Mailbox, refresh_token: str, access_token: str
) -> UUID:
    """An SMTP account whose mailbox is read by XOAUTH2 (no IMAP password), Microsoft's way.

    `access_token` is cached as the account's current token; `refresh_token` is what a refresh
    uses (at the Microsoft double).
    """
    account_id: UUID = await db.fetchval(
        """
        INSERT INTO accounts (name, auth_kind, smtp_host, smtp_port, smtp_tls, from_email,
                              daily_limit, imap_host, imap_port, imap_tls, imap_username)
        VALUES ($1, 'oauth2', '127.0.0.1', 2525, 'none', $1, 1000, $2, $3, 'none', $1)
        RETURNING id
        """,
        mailbox.address,
        mailbox.host,
        mailbox.imap_port,
    )
    await import_refresh_token(db, box, account_id, "microsoft", refresh_token)
    await db.execute(
        """
        UPDATE account_oauth
        SET access_token_enc = $2, access_expires_at = now() + interval '1 hour'
        WHERE account_id = $1
        """,
        account_id,
        box.encrypt(access_token),
    )
    return account_id


async def insert_campaign(
    db: Conn, *, status: str = "running", unsubscribe_scope: str = "global"
) -> UUID:
    owner = await db.fetchval("SELECT id FROM users LIMIT 1")
    if owner is None:
        owner = await db.fetchval(
            "INSERT INTO users (email, password_hash, role) VALUES ('op@example.com', 'x', 'admin')"
            " RETURNING id"
        )
    campaign_id: UUID = await db.fetchval(
        """
        INSERT INTO campaigns (owner_id, name, subject, text_body, status, unsubscribe_scope)
        VALUES ($1, 'test', 'Hello', 'Hi', $2, $3) RETURNING id
        """,
        owner,
        status,
        unsubscribe_scope,
    )
    return campaign_id


async def insert_sent(
    db: Conn,
    campaign_id: UUID,
    account_id: UUID,
    emails: Sequence[str],
    *,
    sent_ago: timedelta = timedelta(minutes=5),
) -> list[tuple[int, str]]:
    """Messages sent to `emails`, as the sender leaves them: (id, Message-ID header) each."""
    rows = await db.fetch(
        """
        INSERT INTO messages (campaign_id, email, status, account_id, attempts, sent_at,
                              assigned_at, message_id)
        SELECT $1, e.email, 'sent', $2, 1, now() - $4::interval, now() - $4::interval,
               '<pending@fleet.test>'
        FROM unnest($3::text[]) WITH ORDINALITY AS e (email, n)
        ORDER BY e.n
        RETURNING id
        """,
        campaign_id,
        account_id,
        list(emails),
        sent_ago,
    )
    sent = []
    for row in sorted(rows, key=lambda r: r["id"]):
        header = f"<{row['id']}.{secrets.token_urlsafe(12)}@fleet.test>"
        await db.execute("UPDATE messages SET message_id = $2 WHERE id = $1", row["id"], header)
        sent.append((row["id"], header))
    return sent


async def insert_queued(db: Conn, campaign_id: UUID, email: str) -> int:
    message_id: int = await db.fetchval(
        "INSERT INTO messages (campaign_id, email) VALUES ($1, $2) RETURNING id",
        campaign_id,
        email,
    )
    return message_id


def _date() -> str:
    return format_datetime(datetime.now(UTC))


def original_headers(
    recipient: str,
    message_id: str,
    *,
    sender: str = "sender1@fleet.test",
    unsubscribe_token: str | None = None,
) -> str:
    """The headers of a message as mailfleet sent it, for the part a report returns."""
    lines = [
        f"From: Fleet <{sender}>",
        f"To: {recipient}",
        "Subject: Hello",
        f"Date: {_date()}",
        f"Message-ID: {message_id}",
    ]
    if unsubscribe_token:
        lines.append(
            f"List-Unsubscribe: <https://t.fleet.test/unsubscribe/{unsubscribe_token}>,"
            f"\r\n <mailto:{sender}?subject=unsubscribe%20{unsubscribe_token}>"
        )
    lines.append("MIME-Version: 1.0")
    return "\r\n".join(lines) + "\r\n"


def dsn(
    recipient: str,
    message_id: str,
    *,
    status: str = "5.1.1",
    action: str = "failed",
    sender: str = "sender1@fleet.test",
    diagnostic: str | None = None,
    unsubscribe_token: str | None = None,
) -> bytes:
    """An RFC 3464 delivery status notification as Postfix writes one."""
    code = "550" if status.startswith("5") else "452"
    diagnostic = diagnostic or f"smtp; {code} {status} <{recipient}>: Recipient address rejected"
    boundary = "dsn-" + secrets.token_hex(6)
    headers = original_headers(
        recipient, message_id, sender=sender, unsubscribe_token=unsubscribe_token
    )
    text = (
        f"From: MAILER-DAEMON@mta.example.net (Mail Delivery System)\r\n"
        f"To: {sender}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {_date()}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@mta.example.net>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is the mail system at host mta.example.net.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mta.example.net\r\n"
        f"Arrival-Date: {_date()}\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"{headers}"
        f"\r\n--{boundary}--\r\n"
    )
    return text.encode()


def arf(recipient: str, message_id: str, *, sender: str = "sender1@fleet.test") -> bytes:
    """An RFC 5965 abuse report as a mailbox provider's feedback loop sends it."""
    boundary = "arf-" + secrets.token_hex(6)
    text = (
        "From: Feedback Loop <fbl@isp.example.org>\r\n"
        f"To: {sender}\r\n"
        "Subject: Abuse report\r\n"
        f"Date: {_date()}\r\n"
        f"Message-ID: <{secrets.token_hex(8)}@isp.example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is an email abuse report.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\n"
        "User-Agent: ExampleFBL/1.0\r\n"
        "Version: 1\r\n"
        f"Original-Mail-From: <{sender}>\r\n"
        f"Original-Rcpt-To: <{recipient}>\r\n"
        f"Arrival-Date: {_date()}\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/rfc822\r\n\r\n"
        f"{original_headers(recipient, message_id, sender=sender)}"
        "Content-Type: text/plain\r\n\r\nHi\r\n"
        f"\r\n--{boundary}--\r\n"
    )
    return text.encode()


def reply(
    from_address: str,
    in_reply_to: str | None,
    *,
    to: str = "sender1@fleet.test",
    auto: bool = False,
    subject: str = "Re: Hello",
) -> bytes:
    """A person's answer, or (auto) an RFC 3834 out-of-office."""
    lines = [
        f"From: Someone <{from_address}>",
        f"To: {to}",
        f"Subject: {'Out of Office: Hello' if auto else subject}",
        f"Date: {_date()}",
        f"Message-ID: <{secrets.token_hex(8)}@example.com>",
    ]
    if in_reply_to:
        lines += [f"In-Reply-To: {in_reply_to}", f"References: {in_reply_to}"]
    if auto:
        lines.append("Auto-Submitted: auto-replied")
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", ""]
    body = "I am away until Monday." if auto else "Thanks, interested! Call me."
    return ("\r\n".join(lines) + "\r\n" + body + "\r\n").encode()


def mail_unsubscribe(from_address: str, token: str, *, to: str = "sender1@fleet.test") -> bytes:
    """What a mail client sends for the mailto: List-Unsubscribe URI."""
    return (
        f"From: {from_address}\r\nTo: {to}\r\nSubject: unsubscribe {token}\r\n"
        f"Date: {_date()}\r\nMessage-ID: <{secrets.token_hex(8)}@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    ).encode()
