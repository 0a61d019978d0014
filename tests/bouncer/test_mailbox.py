"""Reading real mailboxes (Dovecot over IMAP): checkpoints, flags and moves, odd messages,
and replicas sharing the mailboxes.
"""

import asyncio
import random
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import pytest
from aioimaplib import IMAP4
from mailfleet_bouncer.imap import Mailbox as ImapMailbox
from mailfleet_bouncer.replica import BouncerReplica
from mailfleet_bouncer.settings import BouncerSettings, Settings
from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import Conn
from mailfleet_common.settings import (
    CryptoSettings,
    PostgresSettings,
    RabbitSettings,
    TrackingSettings,
)
from prometheus_client import REGISTRY
from pydantic import BaseModel

from tests.bouncer import rows
from tests.bouncer.servers import Dovecot, Mailbox


class Published:
    """A publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, BaseModel]] = []

    async def publish_event(self, event: BaseModel, routing_key: str) -> None:
        self.events.append((routing_key, event))


def bouncer_settings(
    database_dsn: str, rabbit_url: str, crypto_keys: str, tracking_keys: str, **bouncer: Any
) -> Settings:
    return Settings(
        postgres=PostgresSettings(dsn=database_dsn, pool_min=1, pool_max=4),
        rabbit=RabbitSettings(url=rabbit_url),
        crypto=CryptoSettings(keys=crypto_keys),
        tracking=TrackingSettings(keys=tracking_keys),
        bouncer=BouncerSettings(**{"poll_s": 0.2, "rebalance_s": 0.2, **bouncer}),
    )


@pytest.fixture
def settings(database_dsn: str, rabbit_url: str, crypto_keys: str, tracking_keys: str) -> Settings:
    return bouncer_settings(database_dsn, rabbit_url, crypto_keys, tracking_keys)


class Imap:
    """A test's own IMAP session on a mailbox: append, flags, counts."""

    def __init__(self, client: IMAP4) -> None:
        self.client = client

    @classmethod
    async def login(cls, mailbox: Mailbox) -> "Imap":
        client = IMAP4(mailbox.host, mailbox.imap_port)
        await client.wait_hello_from_server()
        assert (await client.login(mailbox.address, mailbox.password)).result == "OK"
        return cls(client)

    async def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        for raw in messages:
            response = await self.client.append(raw, mailbox=folder)
            assert response.result == "OK", response.lines

    async def uids(self, criteria: str = "ALL", folder: str = "INBOX") -> list[int]:
        assert (await self.client.select(folder)).result == "OK"
        response = await self.client.uid_search(criteria, charset=None)
        assert response.result == "OK", response.lines
        return [int(t) for line in response.lines[:-1] for t in bytes(line).split() if t.isdigit()]

    async def unflag_all(self) -> None:
        assert (await self.client.select("INBOX")).result == "OK"
        response = await self.client.uid("store", "1:*", "-FLAGS.SILENT (\\Seen)")
        assert response.result == "OK"

    async def close(self) -> None:
        await self.client.logout()
        self.client.protocol.transport.close()


@pytest.fixture
async def imap(mailbox: Mailbox) -> AsyncIterator[Imap]:
    session = await Imap.login(mailbox)
    yield session
    await session.close()


async def report_count(db: Conn) -> int:
    return int(await db.fetchval("SELECT count(*) FROM inbound_reports"))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_reads_each_message_once_and_flags_it(
    db: Conn,
    box: SecretBox,
    mailbox: Mailbox,
    imap: Imap,
    replica: BouncerReplica,
    published: Published,
) -> None:
    account = await rows.insert_imap_account(db, box, mailbox)
    campaign = await rows.insert_campaign(db)
    sent = await rows.insert_sent(db, campaign, account, ["a@example.net", "b@example.net"])
    await imap.append(
        rows.dsn("a@example.net", sent[0][1], sender=mailbox.address),
        rows.reply("b@example.net", sent[1][1], to=mailbox.address),
    )

    assert await replica.poll(account) == 2
    assert await replica.poll(account) == 0
    assert await imap.uids("UNSEEN") == []
    # The bus copies go out from the outbox, once.
    assert await replica.publish_pending() == 2
    assert await replica.publish_pending() == 0
    sent_ids = [message_id for message_id, _ in sent]
    assert [(key, event.message_id) for key, event in published.events] == [
        ("bounced", sent_ids[0]),
        ("replied", sent_ids[1]),
    ]
    assert await db.fetchval("SELECT count(*) FROM inbound_reports WHERE published_at IS NULL") == 0
    kinds = await db.fetch("SELECT kind, uid FROM inbound_reports ORDER BY uid")
    assert [(r["kind"], r["uid"]) for r in kinds] == [("bounce", 1), ("reply", 2)]

    await imap.append(rows.reply("a@example.net", None, to=mailbox.address, auto=True))
    assert await replica.poll(account) == 1
    checkpoint = await db.fetchrow("SELECT last_uid, last_error FROM mailbox_checkpoints")
    assert (checkpoint["last_uid"], checkpoint["last_error"]) == (3, None)
    assert await report_count(db) == 3


async def test_processed_messages_move_to_the_processed_folder(
    db: Conn, box: SecretBox, mailbox: Mailbox, imap: Imap, replica: BouncerReplica
) -> None:
    account = await rows.insert_imap_account(db, box, mailbox, processed_folder="Processed")
    await imap.append(*[rows.reply(f"x{i}@example.com", None) for i in range(3)])
    polled = await replica.poll(account)
    error = await db.fetchval("SELECT last_error FROM mailbox_checkpoints")
    assert error is None, error
    assert polled == 3
    assert await imap.uids() == []
    assert len(await imap.uids(folder="Processed")) == 3


async def test_left_unflagged_after_a_crash_is_flagged_not_processed_again(
    db: Conn, box: SecretBox, mailbox: Mailbox, imap: Imap, replica: BouncerReplica
) -> None:
    account = await rows.insert_imap_account(db, box, mailbox)
    await imap.append(*[rows.reply(f"x{i}@example.com", None) for i in range(4)])
    assert await replica.poll(account) == 4
    # As if the process died after committing but before setting \Seen.
    await imap.unflag_all()
    assert await replica.poll(account) == 0
    assert await imap.uids("UNSEEN") == []
    assert await report_count(db) == 4


async def test_new_uidvalidity_reads_again_but_acts_once(
    db: Conn, box: SecretBox, mailbox: Mailbox, imap: Imap, replica: BouncerReplica
) -> None:
    account = await rows.insert_imap_account(db, box, mailbox)
    campaign = await rows.insert_campaign(db)
    sent = await rows.insert_sent(db, campaign, account, ["a@example.net"])
    await imap.append(rows.dsn("a@example.net", sent[0][1]), rows.reply("z@example.com", None))
    assert await replica.poll(account) == 2
    await db.execute("UPDATE mailbox_checkpoints SET uidvalidity = uidvalidity + 1")
    before = metric("mailfleet_bouncer_reports_total", kind="bounce", result="duplicate")

    assert await replica.poll(account) == 2  # both read again ...
    assert await report_count(db) == 2  # ... and recognised
    assert metric("mailfleet_bouncer_reports_total", kind="bounce", result="duplicate") == (
        before + 1
    )
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'bounced'") == 1
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1


def _huge_message(size: int) -> bytes:
    message = EmailMessage()
    message["From"] = "Someone <someone@example.com>"
    message["To"] = "sender@fleet.test"
    message["Subject"] = "Here is the file"
    message.set_content("See attached.")
    message.add_attachment(
        random.Random(4).randbytes(size), maintype="application", subtype="octet-stream"
    )
    return message.as_bytes()


async def test_odd_messages_are_kept_counted_and_passed(
    db: Conn,
    box: SecretBox,
    mailbox: Mailbox,
    imap: Imap,
    database_dsn: str,
    rabbit_url: str,
    crypto_keys: str,
    tracking_keys: str,
) -> None:
    settings = bouncer_settings(
        database_dsn, rabbit_url, crypto_keys, tracking_keys, max_message_bytes=1024 * 1024
    )
    bouncer = BouncerReplica(settings)
    await bouncer.open(Published())
    account = await rows.insert_imap_account(db, box, mailbox)
    malformed = (
        b"From: x@example.com\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="never"\r\n\r\n--never\r\n'
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@not base64"
    )
    latin1 = (
        b"From: J\xf6rg <joerg@example.de>\r\nTo: sender@fleet.test\r\n"
        b"Subject: R\xfcckfrage \xe4\xf6\xfc\r\nIn-Reply-To: <1.x@fleet.test>\r\n\r\nHallo\r\n"
    )
    stranger = rows.dsn("stranger@example.net", "<999999.nope@elsewhere.example>")
    truncated_before = metric("mailfleet_bouncer_problems_total", problem="truncated")
    try:
        await imap.append(malformed, _huge_message(3 * 1024 * 1024), latin1, stranger)
        assert await bouncer.poll(account) == 4
    finally:
        await bouncer.stop()
    reports = await db.fetch(
        "SELECT uid, kind, truncated, matched FROM inbound_reports ORDER BY uid"
    )
    assert [r["uid"] for r in reports] == [1, 2, 3, 4]
    assert [r["truncated"] for r in reports] == [False, True, False, False]
    assert reports[2]["kind"] == "reply"
    assert (reports[3]["kind"], reports[3]["matched"]) == ("bounce", 0)
    assert metric("mailfleet_bouncer_problems_total", problem="truncated") == truncated_before + 1
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await imap.uids("UNSEEN") == []


async def test_a_refused_login_is_counted_and_retried(
    db: Conn, box: SecretBox, mailbox: Mailbox, replica: BouncerReplica
) -> None:
    account = await rows.insert_imap_account(db, box, mailbox)
    await db.execute(
        "UPDATE accounts SET imap_password_enc = $1", box.encrypt("not-" + mailbox.password)
    )
    before = metric("mailfleet_bouncer_mailbox_errors_total", stage="read")
    before += metric("mailfleet_bouncer_mailbox_errors_total", stage="connect")
    assert await replica.poll(account) == 0
    error = await db.fetchval(
        "SELECT last_error FROM mailbox_checkpoints WHERE account_id = $1", account
    )
    assert "LOGIN" in error
    after = metric("mailfleet_bouncer_mailbox_errors_total", stage="read")
    after += metric("mailfleet_bouncer_mailbox_errors_total", stage="connect")
    assert after == before + 1


async def test_replicas_split_the_mailboxes_and_take_over(
    db: Conn, box: SecretBox, dovecot: Dovecot, settings: Settings
) -> None:
    accounts = [
        await rows.insert_imap_account(db, box, dovecot.create_mailbox("sender")) for _ in range(4)
    ]
    first, second = BouncerReplica(settings), BouncerReplica(settings)
    try:
        await first.start(Published())
        await _eventually(lambda: first.owned == frozenset(accounts), what=lambda: first.owned)
        await second.start(Published())
        await _eventually(
            lambda: (
                len(first.owned) == 2
                and len(second.owned) == 2
                and first.owned | second.owned == frozenset(accounts)
            ),
            what=lambda: (first.owned, second.owned),
        )
        assert not first.owned & second.owned
        await first.stop()
        await _eventually(lambda: second.owned == frozenset(accounts))
    finally:
        await first.stop()
        await second.stop()


async def _eventually(check: Any, within_s: float = 10.0, what: Any = None) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached: {what() if what else ''}")
        await asyncio.sleep(0.05)


async def test_a_large_mailbox_is_listed_fetched_and_put_away_in_groups(
    box: SecretBox, mailbox: Mailbox, imap: Imap
) -> None:
    # aioimaplib parses each received chunk with one stack frame per line: a single command
    # answering for 1,500 messages would overflow the stack and never complete.
    count = 1500
    await imap.append(*[f"Subject: {i}\r\n\r\nbody {i}\r\n".encode() for i in range(count)])
    reader = await ImapMailbox.connect(
        mailbox.host, mailbox.imap_port, "none", mailbox.address, mailbox.password, timeout_s=30
    )
    try:
        await reader.select("INBOX")
        uids = await reader.uids_after(0)
        assert len(uids) == count
        assert len(await reader.sizes(uids)) == count
        assert len(await reader.fetch(uids[:100], 1024)) == 100
        await reader.mark_seen(uids)
        assert await imap.uids("UNSEEN") == []
        await reader.move(uids, "Processed")
    finally:
        await reader.close()
    assert await imap.uids() == []
    assert len(await imap.uids(folder="Processed")) == count
