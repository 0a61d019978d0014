"""The bouncer across real processes and real mail servers.

Campaigns go out through Postfix; Postfix bounces what Dovecot refuses (unknown users) with
genuine RFC 3464 DSNs into the sending account's own mailbox; the bouncer reads it over IMAP.
"""

import asyncio
import json
import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import aclosing
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote
from uuid import UUID

import aio_pika
import aiosmtplib
import httpx
import pytest
from aioimaplib import IMAP4
from mailfleet_common import topology
from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import Conn as Db
from mailfleet_common.messages import Feedback

from tests.bouncer import rows
from tests.bouncer.servers import (
    REMOTE_DOMAIN,
    Dovecot,
    Mailbox,
    Postfix,
    fetch_messages,
    wait_for_messages,
)
from tests.e2e.conftest import FAST_ENV, campaign_counts, start_campaign, wait_until
from tests.stack import Stack

pytestmark = pytest.mark.slow

BOUNCER_ENV = {"MAILFLEET_BOUNCER__POLL_S": "0.3", "MAILFLEET_BOUNCER__REBALANCE_S": "0.3"}


@pytest.fixture
async def stack(
    db: Db, database_dsn: str, rabbit_url: str, crypto_keys: str, tracking_keys: str
) -> AsyncIterator[Stack]:
    env = {**FAST_ENV, "MAILFLEET_DISPATCHER__STRANDED_AFTER_S": "2"}
    async with Stack(
        postgres_dsn=database_dsn,
        rabbit_url=rabbit_url,
        crypto_keys=crypto_keys,
        tracking_keys=tracking_keys,
        env=env,
    ) as running:
        yield running


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    await stack.start_api()
    async with aclosing(await stack.admin_client()) as admin:
        yield admin


async def create_account(
    client: httpx.AsyncClient, postfix: Postfix, mailbox: Mailbox, **fields: Any
) -> str:
    """An account that sends through Postfix and whose returns land in `mailbox`."""
    body = {
        "name": mailbox.address,
        "smtp_host": "127.0.0.1",
        "smtp_port": postfix.smtp_port,
        "smtp_tls": "none",
        "from_email": mailbox.address,
        "daily_limit": 10_000,
        "imap": {
            "host": mailbox.host,
            "port": mailbox.imap_port,
            "tls": "none",
            "username": mailbox.address,
            "password": mailbox.password,
        },
        **fields,
    }
    response = await client.post("/api/admin/accounts", json=body)
    assert response.status_code == 201, response.text
    account_id: str = response.json()["id"]
    return account_id


async def start_services(
    stack: Stack,
    client: httpx.AsyncClient,
    postfix: Postfix,
    mailbox: Mailbox,
    bouncer_env: dict[str, str] = BOUNCER_ENV,
    **account_fields: Any,
) -> str:
    """Dispatcher, sender and bouncer running, and an account over Postfix and `mailbox`."""
    await stack.start_dispatcher()
    await stack.start_sender()
    await stack.start_bouncer(bouncer_env)
    return await create_account(client, postfix, mailbox, **account_fields)


def unknown_addresses(count: int) -> list[str]:
    return [f"nobody-{secrets.token_hex(4)}@{REMOTE_DOMAIN}" for _ in range(count)]


async def suppressed(db: Db) -> dict[str, str]:
    found = await db.fetch("SELECT email, reason FROM suppressions")
    return {r["email"]: r["reason"] for r in found}


async def test_bounced_addresses_are_suppressed_and_skipped_next_time(
    db: Db,
    rabbit_url: str,
    stack: Stack,
    client: httpx.AsyncClient,
    postfix: Postfix,
    dovecot: Dovecot,
    mailbox: Mailbox,
) -> None:
    account = await start_services(stack, client, postfix, mailbox)
    connection = await aio_pika.connect_robust(rabbit_url)
    channel = await connection.channel()
    events = await channel.declare_exchange(
        topology.EVENTS.name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    bounced_queue = await channel.declare_queue(exclusive=True)
    await bounced_queue.bind(events, routing_key=topology.FEEDBACK_KEYS["bounced"])
    good = [dovecot.create_mailbox("good", domain=REMOTE_DOMAIN).address for _ in range(3)]
    bad = unknown_addresses(2)
    everyone = [good[0], bad[0], good[1], bad[1], good[2]]

    first = await start_campaign(client, [account], everyone)

    async def all_sent() -> bool:
        return (await campaign_counts(client, first)).get("sent", 0) == len(everyone)

    await wait_until(all_sent, 30, "the first campaign sent")

    async def bounces_in() -> bool:
        return set(await suppressed(db)) >= set(bad)

    await wait_until(bounces_in, 60, "the bounces processed")
    assert await suppressed(db) == dict.fromkeys(bad, "hard-bounce")
    marked = await db.fetch("SELECT email, bounce FROM messages WHERE bounce IS NOT NULL")
    assert {r["email"]: r["bounce"] for r in marked} == dict.fromkeys(bad, "hard")
    reports = await db.fetch("SELECT kind, parser, matched FROM inbound_reports")
    assert sorted((r["kind"], r["parser"], r["matched"]) for r in reports) == [
        ("bounce", "rfc3464", 1),
        ("bounce", "rfc3464", 1),
    ]
    detail = (await client.get(f"/api/campaigns/{first}")).json()
    assert detail["feedback"]["hard_bounces"] == 2
    # ... and the bus carried a Feedback event for each.
    feedback = []
    async with bounced_queue.iterator(timeout=15) as messages:
        async for message in messages:
            async with message.process():
                feedback.append(Feedback.model_validate_json(message.body))
            if len(feedback) == len(bad):
                break
    await connection.close()
    assert sorted((f.email, f.bounce, f.status) for f in feedback) == [
        (address, "hard", "5.1.1") for address in sorted(bad)
    ]

    # The same list again: the bounced addresses are refused at enqueue and never sent.
    body = {"name": "again", "subject": "Again", "text_body": "Hi", "account_ids": [account]}
    response = await client.post("/api/campaigns", json=body)
    second = response.json()["id"]
    response = await client.post(
        "/api/queue/enqueue",
        json={"campaign_id": second, "recipients": [{"email": e} for e in everyone]},
    )
    assert response.status_code == 202, response.text
    result = response.json()
    assert result["accepted"] == len(good)
    assert sorted(r["email"] for r in result["rejected"]) == sorted(bad)
    assert {r["reason"] for r in result["rejected"]} == {"suppressed"}
    assert (await client.post(f"/api/campaigns/{second}/start", json={})).status_code == 202

    async def second_sent() -> bool:
        return (await campaign_counts(client, second)).get("sent", 0) == len(good)

    await wait_until(second_sent, 30, "the second campaign sent")
    for address in good:
        assert dovecot.message_count(address) == 2
    # Nothing new bounced: the account's mailbox holds the first two DSNs only.
    assert dovecot.message_count(mailbox.address) == 2


async def test_an_account_over_its_bounce_rate_is_paused_then_resumed(
    db: Db,
    stack: Stack,
    client: httpx.AsyncClient,
    postfix: Postfix,
    dovecot: Dovecot,
    mailbox: Mailbox,
) -> None:
    env = {
        **BOUNCER_ENV,
        "MAILFLEET_BOUNCER__RATE_MIN_SENDS": "3",
        "MAILFLEET_BOUNCER__BOUNCE_RATE_MAX": "0.1",
    }
    account = await start_services(stack, client, postfix, mailbox, env, min_gap_ms=400)
    bad = unknown_addresses(2)
    good = [dovecot.create_mailbox("good", domain=REMOTE_DOMAIN).address for _ in range(26)]
    # Paced at 400 ms: the two bounces come back while the good ones are still going out.
    campaign = await start_campaign(client, [account], [*bad, *good])

    async def paused() -> bool:
        status = await db.fetchval("SELECT status FROM accounts WHERE id = $1::uuid", account)
        return status == "paused"

    await wait_until(paused, 60, "the account paused")
    event = await db.fetchrow(
        "SELECT occurred_at, data FROM events WHERE type = 'account-paused' AND account_id = $1",
        account,
    )
    why = json.loads(event["data"])["reason"]
    assert "bounce rate" in why
    assert (await client.get(f"/api/admin/accounts/{account}")).json()["status_reason"] == why
    # Within one dispatch cycle (100 ms here) nothing more is assigned to it, and nothing
    # reaches the SMTP server after the message that was in flight.
    await asyncio.sleep(2.0)
    late_assigned = await db.fetchval(
        "SELECT count(*) FROM messages "
        "WHERE account_id = $1 AND assigned_at > $2::timestamptz + interval '0.2 s'",
        account,
        event["occurred_at"],
    )
    assert late_assigned == 0
    late_sent = await db.fetchval(
        "SELECT count(*) FROM messages "
        "WHERE account_id = $1 AND sent_at > $2::timestamptz + interval '1 s'",
        account,
        event["occurred_at"],
    )
    assert late_sent == 0
    counts = await campaign_counts(client, campaign)
    assert counts.get("sent", 0) < 28

    response = await client.patch(f"/api/admin/accounts/{account}", json={"status": "active"})
    assert response.status_code == 200, response.text

    async def finished() -> bool:
        return (await campaign_counts(client, campaign)).get("sent", 0) == 28

    await wait_until(finished, 60, "the campaign finished after resume")
    assert await db.fetchval("SELECT status FROM accounts WHERE id = $1::uuid", account) == "active"


async def test_a_bouncer_killed_mid_mailbox_skips_nothing_and_repeats_nothing(
    db: Db, stack: Stack, crypto_keys: str, mailbox: Mailbox
) -> None:
    count = 300
    box = SecretBox(crypto_keys.split(","))
    account = await rows.insert_imap_account(db, box, mailbox)
    campaign = await rows.insert_campaign(db)
    emails = [f"r{i}-{secrets.token_hex(3)}@example.net" for i in range(count)]
    sent = await rows.insert_sent(db, campaign, account, emails)
    client = IMAP4(mailbox.host, mailbox.imap_port)
    await client.wait_hello_from_server()
    await client.login(mailbox.address, mailbox.password)
    for (_, header), email in zip(sent, emails, strict=True):
        assert (await client.append(rows.dsn(email, header), mailbox="INBOX")).result == "OK"

    env = {**BOUNCER_ENV, "MAILFLEET_BOUNCER__FETCH_BATCH": "5"}
    first = await stack.start_bouncer(env)

    async def some_done() -> bool:
        return int(await db.fetchval("SELECT count(*) FROM inbound_reports")) >= 40

    await wait_until(some_done, 30, "some reports processed", every_s=0.01)
    await first.kill(signal.SIGKILL)
    done_at_kill = int(await db.fetchval("SELECT count(*) FROM inbound_reports"))
    assert done_at_kill < count, "the mailbox was finished before the kill: nothing proven"

    await stack.start_bouncer(env)

    async def all_done() -> bool:
        return int(await db.fetchval("SELECT count(*) FROM inbound_reports")) == count

    await wait_until(all_done, 60, "every report processed")
    assert await db.fetchval("SELECT count(DISTINCT uid) FROM inbound_reports") == count
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'bounced'") == count
    assert await db.fetchval("SELECT count(*) FROM suppressions") == count
    assert await db.fetchval("SELECT last_uid FROM mailbox_checkpoints") == count

    async def all_seen() -> bool:
        await client.select("INBOX")
        response = await client.uid_search("UNSEEN", charset=None)
        return not any(bytes(line).strip() for line in response.lines[:-1])

    await wait_until(all_seen, 10, "every message flagged")
    await client.logout()


def _mailto(delivered: Any) -> tuple[str, str]:
    """The address and subject of a delivered message's mailto: List-Unsubscribe URI."""
    header = str(delivered["List-Unsubscribe"])
    uri = next(part.strip(" <>") for part in header.split(",") if "mailto:" in part)
    address, _, query = uri.removeprefix("mailto:").partition("?")
    subject = unquote(query.removeprefix("subject="))
    return unquote(address), subject


async def test_replies_and_mail_unsubscribes_come_back_through_real_servers(
    db: Db,
    stack: Stack,
    client: httpx.AsyncClient,
    postfix: Postfix,
    dovecot: Dovecot,
    mailbox: Mailbox,
) -> None:
    account = await start_services(stack, client, postfix, mailbox)
    lead, leaver, away = (dovecot.create_mailbox("r", domain=REMOTE_DOMAIN) for _ in range(3))
    campaign = await start_campaign(client, [account], [lead.address, leaver.address, away.address])
    for person in (lead, leaver, away):
        await wait_for_messages(dovecot, person.address, within=30)

    (to_lead,) = await fetch_messages(lead)
    (to_leaver,) = await fetch_messages(leaver)
    (to_away,) = await fetch_messages(away)
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=postfix.smtp_port)
    async with smtp:
        answer = EmailMessage()
        answer["From"] = lead.address
        answer["To"] = mailbox.address
        answer["Subject"] = "Re: " + str(to_lead["Subject"])
        answer["In-Reply-To"] = str(to_lead["Message-ID"])
        answer["References"] = str(to_lead["Message-ID"])
        answer.set_content("Sounds good, let's talk on Monday.")
        await smtp.send_message(answer)

        address, subject = _mailto(to_leaver)
        request = EmailMessage()
        request["From"] = leaver.address
        request["To"] = address
        request["Subject"] = subject
        await smtp.send_message(request)

        auto = EmailMessage()
        auto["From"] = away.address
        auto["To"] = mailbox.address
        auto["Subject"] = "Automatic reply: " + str(to_away["Subject"])
        auto["In-Reply-To"] = str(to_away["Message-ID"])
        auto["Auto-Submitted"] = "auto-replied"
        auto.set_content("I am out of the office until Monday.")
        await smtp.send_message(auto)

    async def all_in() -> bool:
        return int(await db.fetchval("SELECT count(*) FROM inbound_reports")) == 3

    await wait_until(all_in, 30, "the three answers processed")
    found = await db.fetch("SELECT email, campaign_id, reason FROM suppressions")
    assert {r["email"]: (r["reason"], r["campaign_id"]) for r in found} == {
        lead.address: ("replied", UUID(campaign)),
        leaver.address: ("unsubscribe", None),
    }
    kinds = await db.fetch("SELECT type, message_id FROM events WHERE type <> 'send-attempt'")
    by_type = {r["type"]: r["message_id"] for r in kinds if r["message_id"] is not None}
    assert set(by_type) >= {"replied", "unsubscribed", "auto-replied"}
    replied = await db.fetchval("SELECT email FROM messages WHERE replied_at IS NOT NULL")
    assert replied == lead.address
