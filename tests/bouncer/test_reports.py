"""Acting on reports, against the real database: matching, suppression, soft bounces, rates."""

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest
from mailfleet_bouncer.imap import Fetched
from mailfleet_bouncer.queries import start_checkpoint
from mailfleet_bouncer.reports import Folder, ReportProcessor
from mailfleet_bouncer.settings import BouncerSettings
from mailfleet_common.db import Conn, Pool, create_pool
from mailfleet_common.messages import AccountPaused
from mailfleet_common.settings import PostgresSettings
from mailfleet_common.tracking import TokenKind, TokenSigner, parse_keys

from tests.bouncer import rows

UIDVALIDITY = 7


@pytest.fixture
async def pool(db: Conn, database_dsn: str) -> AsyncIterator[Pool]:
    pool = await create_pool(PostgresSettings(dsn=database_dsn, pool_min=1, pool_max=2))
    yield pool
    await pool.close()


@pytest.fixture
def signer(tracking_keys: str) -> TokenSigner:
    return TokenSigner(parse_keys(tracking_keys))


def make_processor(signer: TokenSigner, **options: Any) -> ReportProcessor:
    settings = {"rate_min_sends": 10, "rate_window_sends": 100, **options}
    return ReportProcessor(BouncerSettings(**settings), signer)


@pytest.fixture
def processor(signer: TokenSigner) -> ReportProcessor:
    return make_processor(signer)


class Feed:
    """Messages handed to the processor as the reader would, with ascending UIDs."""

    def __init__(self, pool: Pool, processor: ReportProcessor, account_id: UUID) -> None:
        self.pool = pool
        self.processor = processor
        self.mailbox = Folder(account_id, "INBOX", UIDVALIDITY)
        self.uid = 0
        self.paused: AccountPaused | None = None

    async def __call__(self, raw: bytes) -> Any:
        self.uid += 1
        async with self.pool.acquire() as conn:
            if self.uid == 1:
                await start_checkpoint(conn, self.mailbox.account_id, "INBOX", UIDVALIDITY)
            outcome = await self.processor.process(
                conn, self.mailbox, Fetched(self.uid, len(raw), raw)
            )
            # As the reader does after each fetched group.
            self.paused = await self.processor.judge(conn, self.mailbox.account_id)
            return outcome


async def setup(db: Conn, pool: Pool, processor: ReportProcessor, emails: list[str]) -> Any:
    account = await rows.insert_account(db)
    campaign = await rows.insert_campaign(db)
    sent = await rows.insert_sent(db, campaign, account, emails)
    return account, campaign, sent, Feed(pool, processor, account)


async def suppressions(db: Conn) -> dict[str, tuple[str, Any, str, Any]]:
    found = await db.fetch(
        "SELECT email, campaign_id, reason, source, expires_at FROM suppressions"
    )
    return {
        r["email"]: (r["reason"], r["campaign_id"], r["source"], r["expires_at"]) for r in found
    }


async def test_hard_bounce_suppresses_marks_and_cancels_elsewhere(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    account, _, sent, feed = await setup(
        db, pool, processor, ["gone@example.net", "ok@example.net"]
    )
    other_campaign = await rows.insert_campaign(db)
    queued = await rows.insert_queued(db, other_campaign, "Gone@Example.net")

    outcome = await feed(rows.dsn("gone@example.net", sent[0][1]))

    assert outcome.kind == "bounce"
    assert [f.message_id for f in outcome.feedback] == [sent[0][0]]
    assert outcome.feedback[0].bounce == "hard"
    assert outcome.feedback[0].status == "5.1.1"
    found = await suppressions(db)
    assert set(found) == {"gone@example.net"}
    reason, scope, source, expires = found["gone@example.net"]
    assert (reason, scope, expires) == ("hard-bounce", None, None)
    assert source == f"bouncer:report:{outcome.report_id}"
    message = await db.fetchrow("SELECT bounce, bounced_at FROM messages WHERE id = $1", sent[0][0])
    assert message["bounce"] == "hard"
    assert message["bounced_at"] is not None
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", queued) == "cancelled"
    event = await db.fetchrow("SELECT type, message_id, account_id, data FROM events")
    assert (event["type"], event["message_id"], event["account_id"]) == (
        "bounced",
        sent[0][0],
        account,
    )
    report = await db.fetchrow("SELECT kind, parser, matched, published_at FROM inbound_reports")
    assert (report["kind"], report["matched"], report["published_at"]) == ("bounce", 1, None)
    assert report["parser"] == "rfc3464"
    assert await db.fetchval("SELECT last_uid FROM mailbox_checkpoints") == 1


async def test_the_same_message_twice_acts_once(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    _, _, sent, feed = await setup(db, pool, processor, ["gone@example.net"])
    raw = rows.dsn("gone@example.net", sent[0][1])
    first = await feed(raw)
    again = await feed(raw)
    assert first.report_id is not None
    assert again.report_id is None
    assert again.feedback == []
    assert await db.fetchval("SELECT count(*) FROM events") == 1
    assert await db.fetchval("SELECT count(*) FROM inbound_reports") == 1
    assert await db.fetchval("SELECT last_uid FROM mailbox_checkpoints") == 2


async def test_soft_bounces_suppress_for_a_while_at_the_limit(
    db: Conn, pool: Pool, signer: TokenSigner
) -> None:
    processor = make_processor(signer, soft_bounce_limit=3, soft_suppress_days=30)
    account, _, sent, feed = await setup(db, pool, processor, ["full@example.net"])
    # Two more campaigns' messages to the same address.
    for _ in range(2):
        sent += await rows.insert_sent(
            db, await rows.insert_campaign(db), account, ["full@example.net"]
        )
    for attempt in range(3):  # three delay notices for the first message count once
        outcome = await feed(
            rows.dsn("full@example.net", sent[0][1], status="4.2.2", action="delayed")
            + f"\r\nX-Try: {attempt}".encode()
        )
        assert outcome.feedback[0].bounce == "soft"
    await feed(rows.dsn("full@example.net", sent[1][1], status="4.2.2", action="delayed"))
    assert await suppressions(db) == {}
    await feed(rows.dsn("full@example.net", sent[2][1], status="4.2.2", diagnostic="smtp; 452"))
    reason, scope, _, expires = (await suppressions(db))["full@example.net"]
    assert (reason, scope) == ("soft-bounce", None)
    days = (expires - await db.fetchval("SELECT now()")).total_seconds() / 86400
    assert 29.9 < days <= 30
    assert await db.fetchval("SELECT count(*) FROM messages WHERE bounce = 'soft'") == 3


async def test_a_later_hard_bounce_makes_a_soft_suppression_permanent(
    db: Conn, pool: Pool, signer: TokenSigner
) -> None:
    processor = make_processor(signer, soft_bounce_limit=1)
    _, _, sent, feed = await setup(db, pool, processor, ["x@example.net"])
    await feed(rows.dsn("x@example.net", sent[0][1], status="4.4.1"))
    assert (await suppressions(db))["x@example.net"][3] is not None
    await feed(rows.dsn("x@example.net", sent[0][1], status="5.1.1"))
    reason, _, _, expires = (await suppressions(db))["x@example.net"]
    assert expires is None
    assert reason == "hard-bounce"  # a temporary entry takes the reason that made it permanent
    assert await db.fetchval("SELECT bounce FROM messages") == "hard"


async def test_complaint_suppresses(db: Conn, pool: Pool, processor: ReportProcessor) -> None:
    _, _, sent, feed = await setup(db, pool, processor, ["angry@example.org"])
    outcome = await feed(rows.arf("angry@example.org", sent[0][1]))
    assert outcome.kind == "complaint"
    assert outcome.feedback[0].feedback_type == "abuse"
    assert (await suppressions(db))["angry@example.org"][0] == "complaint"
    assert await db.fetchval("SELECT complained_at IS NOT NULL FROM messages")


async def test_an_opt_out_report_unsubscribes_without_a_complaint(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    _, _, sent, feed = await setup(db, pool, processor, ["done@example.org"])
    raw = rows.arf("done@example.org", sent[0][1]).replace(
        b"Feedback-Type: abuse", b"Feedback-Type: opt-out"
    )
    outcome = await feed(raw)
    assert (outcome.kind, outcome.feedback[0].message_id) == ("unsubscribe", sent[0][0])
    assert (await suppressions(db))["done@example.org"][0] == "unsubscribe"
    assert not await db.fetchval("SELECT complained_at IS NOT NULL FROM messages")


async def test_human_reply_stops_only_that_campaign(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    _, campaign, sent, feed = await setup(db, pool, processor, ["lead@example.com"])
    other = await rows.insert_queued(db, await rows.insert_campaign(db), "lead@example.com")

    outcome = await feed(rows.reply("lead@example.com", sent[0][1]))

    assert outcome.kind == "reply"
    reason, scope, _, _ = (await suppressions(db))["lead@example.com"]
    assert (reason, scope) == ("replied", campaign)
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", other) == "queued"
    assert await db.fetchval(
        "SELECT replied_at IS NOT NULL FROM messages WHERE id = $1", sent[0][0]
    )


async def test_reply_matched_by_sender_when_headers_are_gone(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    _, _, sent, feed = await setup(db, pool, processor, ["lead@example.com"])
    outcome = await feed(rows.reply("lead@example.com", None))
    assert outcome.kind == "reply"
    assert outcome.feedback[0].message_id == sent[0][0]
    detail = await db.fetchval("SELECT details FROM inbound_reports")
    assert '"matched_by": "recipient"' in detail


async def test_auto_reply_is_recorded_not_acted_on(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    _, _, sent, feed = await setup(db, pool, processor, ["away@example.com"])
    outcome = await feed(rows.reply("away@example.com", sent[0][1], auto=True))
    assert outcome.kind == "auto-reply"
    assert outcome.feedback[0].kind == "auto-replied"
    assert await suppressions(db) == {}
    assert await db.fetchval("SELECT type FROM events") == "auto-replied"


async def test_mailto_unsubscribe_needs_a_valid_token(
    db: Conn, pool: Pool, processor: ReportProcessor, signer: TokenSigner
) -> None:
    _, _campaign, sent, feed = await setup(db, pool, processor, ["bye@example.com"])
    forged = TokenSigner(parse_keys("k" * 40)).sign(TokenKind.UNSUBSCRIBE, sent[0][0], 1)
    await feed(rows.mail_unsubscribe("bye@example.com", forged))
    assert await suppressions(db) == {}

    token = signer.sign(TokenKind.UNSUBSCRIBE, sent[0][0], int(time.time()))
    outcome = await feed(rows.mail_unsubscribe("bye@example.com", token))
    assert outcome.kind == "unsubscribe"
    assert outcome.feedback[0].message_id == sent[0][0]
    reason, scope, _, _ = (await suppressions(db))["bye@example.com"]
    assert (reason, scope) == ("unsubscribe", None)
    assert await db.fetchval("SELECT type FROM events WHERE message_id = $1", sent[0][0]) == (
        "unsubscribed"
    )


async def test_dsn_for_a_message_never_sent_changes_nothing(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    _, _, _, feed = await setup(db, pool, processor, ["someone@example.net"])
    outcome = await feed(rows.dsn("stranger@example.net", "<1.nope@elsewhere.example>"))
    assert outcome.kind == "bounce"
    assert outcome.feedback[0].message_id is None
    assert await suppressions(db) == {}
    details = await db.fetchval("SELECT details FROM inbound_reports")
    assert '"action": "unmatched"' in details


async def test_a_report_about_another_accounts_message_is_not_acted_on(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    _, _campaign, sent, _ = await setup(db, pool, processor, ["victim@example.net"])
    intruder = await rows.insert_account(db, from_email="other@fleet.test")
    feed = Feed(pool, processor, intruder)
    outcome = await feed(rows.dsn("victim@example.net", sent[0][1]))
    assert outcome.feedback[0].message_id is None
    assert await suppressions(db) == {}


async def test_bounce_rate_over_threshold_pauses_the_account(
    db: Conn, pool: Pool, signer: TokenSigner
) -> None:
    processor = make_processor(signer, bounce_rate_max=0.05, rate_min_sends=20)
    emails = [f"r{i}@example.net" for i in range(20)]
    account, _, sent, feed = await setup(db, pool, processor, emails)
    await feed(rows.dsn(emails[0], sent[0][1]))  # 1 in 20: 5%, not above
    assert feed.paused is None
    await feed(rows.dsn(emails[1], sent[1][1]))  # 2 in 20: 10%
    paused = feed.paused
    assert paused is not None
    assert paused.account_id == account
    assert "bounce rate 10.00% over the last 20 sends" in paused.reason
    status, why = await db.fetchrow("SELECT status, status_reason FROM accounts")
    assert status == "paused"
    assert why == paused.reason
    event = await db.fetchrow("SELECT occurred_at, data FROM events WHERE type = 'account-paused'")
    assert event["occurred_at"] == paused.paused_at

    # Resumed: the window starts afresh, so the old bounces do not pause it again.
    await db.execute("UPDATE accounts SET status = 'active', rates_since = now()")
    await feed(rows.dsn(emails[2], sent[2][1]))
    assert await db.fetchval("SELECT status FROM accounts") == "active"


async def test_too_few_sends_are_not_judged(db: Conn, pool: Pool, signer: TokenSigner) -> None:
    processor = make_processor(signer, rate_min_sends=50)
    _, _, sent, feed = await setup(db, pool, processor, ["a@example.net", "b@example.net"])
    await feed(rows.dsn("a@example.net", sent[0][1]))
    assert feed.paused is None
    assert await db.fetchval("SELECT status FROM accounts") == "active"


async def test_complaint_rate_pauses(db: Conn, pool: Pool, signer: TokenSigner) -> None:
    processor = make_processor(signer, complaint_rate_max=0.003, rate_min_sends=10)
    emails = [f"r{i}@example.org" for i in range(10)]
    _, _, sent, feed = await setup(db, pool, processor, emails)
    await feed(rows.arf(emails[3], sent[3][1]))
    assert feed.paused is not None
    assert "complaint rate 10.00%" in feed.paused.reason


async def test_unrecognized_is_kept_and_a_failure_does_not_stall(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    account, _, _, feed = await setup(db, pool, processor, ["a@example.net"])
    outcome = await feed(b"\x00\xff garbage that is no mail at all")
    assert outcome.kind == "unrecognized"
    kept = await db.fetchrow("SELECT raw, problem, published_at FROM inbound_reports")
    assert bytes(kept["raw"]).startswith(b"\x00\xff garbage")
    assert kept["published_at"] is not None  # nothing to publish

    raw = b"Subject: boom\r\n\r\nbody"
    async with pool.acquire() as conn:
        await processor.keep_failed(conn, feed.mailbox, Fetched(9, len(raw), raw), "boom")
    row = await db.fetchrow(
        "SELECT kind, problem FROM inbound_reports WHERE digest = $1", hashlib.sha256(raw).digest()
    )
    assert row["kind"] == "unrecognized"
    assert "processing failed: boom" in row["problem"]
    assert (
        await db.fetchval("SELECT last_uid FROM mailbox_checkpoints WHERE account_id = $1", account)
        == 9
    )


async def test_mail_unsubscribe_counts_in_any_accounts_mailbox(
    db: Conn, pool: Pool, processor: ReportProcessor, signer: TokenSigner
) -> None:
    _, _, sent, _ = await setup(db, pool, processor, ["bye@example.com"])
    central = await rows.insert_account(db, from_email="unsubscribe@fleet.example.com")
    token = signer.sign(TokenKind.UNSUBSCRIBE, sent[0][0], int(time.time()))
    outcome = await Feed(pool, processor, central)(rows.mail_unsubscribe("bye@example.com", token))
    assert outcome.feedback[0].message_id == sent[0][0]
    assert (await suppressions(db))["bye@example.com"][0] == "unsubscribe"


async def test_a_bounce_records_why_it_is_soft(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    _, _, sent, feed = await setup(db, pool, processor, ["careful@example.org"])
    diagnostic = "smtp; 550 Message rejected: SPF check failed for fleet.test"
    outcome = await feed(
        rows.dsn("careful@example.org", sent[0][1], status="5.0.0", diagnostic=diagnostic)
    )
    assert outcome.feedback[0].bounce == "soft"
    assert await suppressions(db) == {}
    details = await db.fetchval("SELECT details FROM inbound_reports")
    assert '"reason": "sender authentication (SPF, DKIM, DMARC)' in details
    assert '"action": "soft-bounce:1"' in details


async def test_apple_one_click_unsubscribe_acts_by_its_sender(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    _, _, sent, feed = await setup(db, pool, processor, ["leaving@example.com"])
    raw = (
        b"From: Leaving <leaving@example.com>\r\nTo: unsubscribe@fleet.test\r\n"
        b"Subject: unsubscribe\r\nAuto-Submitted: auto-replied\r\nX-Apple-Unsubscribe: true\r\n"
        b"Message-ID: <1D2C3B4A-0000-4000-8000-000000000001@example.com>\r\n\r\n"
        b"Apple Mail sent this email to unsubscribe from the message.\r\n"
    )
    outcome = await feed(raw)
    assert (outcome.kind, outcome.feedback[0].message_id) == ("unsubscribe", sent[0][0])
    reason, scope, _, _ = (await suppressions(db))["leaving@example.com"]
    assert (reason, scope) == ("unsubscribe", None)
    assert '"matched_by": "sender"' in await db.fetchval("SELECT details FROM inbound_reports")


async def test_a_bounce_naming_only_our_own_address_suppresses_nothing(
    db: Conn, pool: Pool, processor: ReportProcessor
) -> None:
    # The account wrote to its own address once: a notice about it must not suppress it.
    _, _, sent, feed = await setup(db, pool, processor, ["sender1@fleet.test"])
    outcome = await feed(rows.dsn("sender1@fleet.test", sent[0][1]))
    assert await suppressions(db) == {}
    assert all(item.bounce is None for item in outcome.feedback)
    # Sent from another address, the notice does not show ours as the sender's: the
    # account's own addresses are never suppressed all the same.
    outcome = await feed(rows.dsn("sender1@fleet.test", sent[0][1], sender="bulk@fleet.test"))
    assert outcome.feedback[0].bounce == "hard"
    assert await suppressions(db) == {}
    details = await db.fetchval("SELECT details FROM inbound_reports ORDER BY id DESC LIMIT 1")
    assert '"action": "none:own-address"' in details
