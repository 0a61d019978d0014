"""The bouncer tests' mail servers, end to end: SMTP into Postfix, LMTP into Dovecot, IMAP out."""

from email.message import EmailMessage, Message
from email.utils import make_msgid

import aiosmtplib

from tests.bouncer.servers import (
    REMOTE_DOMAIN,
    Dovecot,
    Mailbox,
    Postfix,
    fetch_messages,
    wait_for_messages,
)

UNKNOWN = f"nobody-xyz@{REMOTE_DOMAIN}"


def _message(sender: str, recipient: str, subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="fleet.test")
    message.set_content("Hello from the bouncer tests.\n")
    return message


async def _send(postfix: Postfix, message: EmailMessage, sender: str, recipient: str) -> None:
    refused, _ = await aiosmtplib.send(
        message,
        hostname=postfix.host,
        port=postfix.smtp_port,
        sender=sender,
        recipients=[recipient],
        start_tls=False,
        timeout=10,
    )
    assert refused == {}


async def test_mail_to_a_known_user_is_read_over_imap(
    dovecot: Dovecot, postfix: Postfix, mailbox: Mailbox
) -> None:
    recipient = dovecot.create_mailbox("rcpt", REMOTE_DOMAIN)
    message = _message(mailbox.address, recipient.address, "known recipient")
    await _send(postfix, message, mailbox.address, recipient.address)

    assert await wait_for_messages(dovecot, recipient.address, 1, postfix=postfix) == 1
    [received] = await fetch_messages(recipient)
    assert received["Message-ID"] == message["Message-ID"]
    assert received["Subject"] == "known recipient"
    assert received["Delivered-To"] == recipient.address
    assert received.get_content().strip() == "Hello from the bouncer tests."
    assert dovecot.message_count(mailbox.address) == 0


async def test_unknown_recipient_returns_a_dsn_to_the_sender(
    dovecot: Dovecot, postfix: Postfix, mailbox: Mailbox
) -> None:
    message = _message(mailbox.address, UNKNOWN, "unknown recipient")
    # Accepted at SMTP time: Postfix bounces it once Dovecot's LMTP refuses the user.
    await _send(postfix, message, mailbox.address, UNKNOWN)

    await wait_for_messages(dovecot, mailbox.address, 1, within=15, postfix=postfix)
    [dsn] = await fetch_messages(mailbox)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["To"] == mailbox.address

    parts = {part.get_content_type(): part for part in dsn.iter_parts()}
    # A message/delivery-status body parses into header blocks: per message, then per recipient.
    blocks = parts["message/delivery-status"].get_payload()
    assert isinstance(blocks, list)
    per_message, *per_recipient = blocks
    assert isinstance(per_message, Message)
    assert per_message["Reporting-MTA"] == "dns; mta.fleet.example.com"
    [recipient] = per_recipient
    assert isinstance(recipient, Message)
    assert recipient["Final-Recipient"] == f"rfc822; {UNKNOWN}"
    assert recipient["Action"] == "failed"
    assert recipient["Status"].startswith("5.")

    returned = parts["message/rfc822"].get_payload(0)
    assert isinstance(returned, Message)
    assert returned["Message-ID"] == message["Message-ID"]
    assert returned["Subject"] == "unknown recipient"
