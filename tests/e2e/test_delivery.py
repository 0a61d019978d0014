"""Recipients enqueued over HTTP reach a real SMTP server through real processes, once each."""

import asyncio
import json
import time
from collections import Counter
from contextlib import aclosing

import asyncpg
import pytest

from tests.e2e.conftest import Fleet, campaign_counts, create_account, start_campaign, wait_until
from tests.smtp_peer import SmtpPeer
from tests.stack import ServiceProcess, Stack

pytestmark = pytest.mark.slow


async def test_thousand_recipients_reach_smtp_exactly_once_within_every_daily_limit(
    fleet: Fleet, db: "asyncpg.Connection[asyncpg.Record]"
) -> None:
    sink, client = fleet.sink, fleet.client
    accounts = [
        await create_account(client, f"acct{i}", sink.port, daily_limit=300) for i in range(4)
    ]
    emails = [f"person{i}@example.org" for i in range(1000)]
    campaign_id = await start_campaign(client, [a["id"] for a in accounts], emails)

    async def all_sent() -> bool:
        return (await campaign_counts(client, campaign_id)).get("sent", 0) == 1000

    await wait_until(all_sent, 120, "1,000 messages sent")
    records = await sink.wait_for_records(1000)
    await asyncio.sleep(1.0)  # anything extra would have arrived by now
    records = sink.records()

    stats = (await client.get("/api/admin/stats")).json()

    message_ids = [r["message_id"] for r in records]
    assert len(records) == 1000
    assert len(set(message_ids)) == 1000
    assert sorted(rcpt for r in records for rcpt in r["recipients"]) == sorted(emails)
    stored = await db.fetch("SELECT message_id, account_id FROM messages")
    assert {r["message_id"] for r in stored} == set(message_ids)
    per_account = Counter(r["account_id"] for r in stored)
    assert len(per_account) == 4
    assert max(per_account.values()) <= 300
    assert stats["today"]["accounts_by_status"] == {"active": 4}
    assert stats["today"]["reserved"] <= stats["today"]["effective_limit"] == 4 * 300


async def test_killed_sender_replica_loses_nothing_and_sends_nothing_twice(
    stack: Stack, db: "asyncpg.Connection[asyncpg.Record]"
) -> None:
    sink = await stack.start_sink()
    await stack.start_api()
    await stack.start_dispatcher()
    # INFO logs: each replica logs its id when it starts.
    senders = [await stack.start_sender({"MAILFLEET_LOG_LEVEL": "INFO"}) for _ in range(2)]
    replica_of = {replica_id(sender): sender for sender in senders}
    async with aclosing(await stack.admin_client()) as client:
        # Paced accounts (50 messages/s each) keep the run going for several seconds.
        accounts = [
            await create_account(client, f"acct{i}", sink.port, min_gap_ms=20) for i in range(4)
        ]
        emails = [f"person{i}@example.org" for i in range(1200)]
        campaign_id = await start_campaign(client, [a["id"] for a in accounts], emails)

        async def quarter_sent() -> bool:
            return (await campaign_counts(client, campaign_id)).get("sent", 0) >= 300

        await wait_until(quarter_sent, 60, "300 messages sent")
        # Kill the replica that has delivered the most so far: it is surely active somewhere.
        dead = await db.fetchval(
            "SELECT sender_replica FROM messages WHERE status = 'sent' "
            "GROUP BY sender_replica ORDER BY count(*) DESC LIMIT 1"
        )
        killed_at = time.time()
        await replica_of[dead].kill()

        async def settled() -> bool:
            counts = await campaign_counts(client, campaign_id)
            return counts.get("sent", 0) + counts.get("uncertain", 0) == 1200

        await wait_until(settled, 120, "every message sent or uncertain")
        queue = (await client.get("/api/queue/status")).json()

    await asyncio.sleep(1.0)
    records = sink.records()
    message_ids = [r["message_id"] for r in records]
    assert len(message_ids) == len(set(message_ids)), "a message reached the server twice"
    recipients = [rcpt for r in records for rcpt in r["recipients"]]
    assert len(recipients) == len(set(recipients)), "a recipient got two messages"

    statuses = dict(await db.fetch("SELECT status, count(*) FROM messages GROUP BY status"))
    assert set(statuses) <= {"sent", "uncertain"}
    uncertain = statuses.get("uncertain", 0)
    # At most the message in hand on each account the dead replica was delivering for.
    assert uncertain <= len(accounts)
    assert queue["by_status"].get("uncertain", 0) == uncertain
    if uncertain:
        reported = await db.fetchval("SELECT count(*) FROM events WHERE type = 'uncertain'")
        assert reported == uncertain
    sent_ids = {
        r["message_id"]
        for r in await db.fetch("SELECT message_id FROM messages WHERE status = 'sent'")
    }
    assert sent_ids <= set(message_ids), "a message marked sent never reached the server"

    # Takeover: every account the dead replica was delivering for moved on within 5 s.
    taken_over = await db.fetch(
        """
        SELECT account_id, min(extract(epoch FROM sent_at)) AS first_after
        FROM messages
        WHERE sender_replica <> $1 AND sent_at > to_timestamp($2)
          AND account_id IN (SELECT account_id FROM messages WHERE sender_replica = $1)
        GROUP BY account_id
        """,
        dead,
        killed_at,
    )
    assert taken_over, "no account of the killed replica was taken over"
    for row in taken_over:
        assert float(row["first_after"]) - killed_at < 5.0


def replica_id(sender: ServiceProcess) -> str:
    """The id a sender replica logged when it started."""
    for line in sender.log_path.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("message") == "sender replica started":
                return str(record["replica"])
    raise AssertionError(f"{sender.name} logged no replica id")


async def test_temporary_failures_are_retried_and_permanent_ones_fail(
    stack: Stack, db: "asyncpg.Connection[asyncpg.Record]", smtp_peer: SmtpPeer
) -> None:
    await stack.start_api()
    await stack.start_dispatcher()
    await stack.start_sender()
    async with aclosing(await stack.admin_client()) as client:
        account = await create_account(client, "retry", smtp_peer.port)
        emails = ["ok@example.org", "tempfail2-a@example.org", "reject-b@example.org"]
        campaign_id = await start_campaign(client, [account["id"]], emails)

        async def settled() -> bool:
            counts = await campaign_counts(client, campaign_id)
            return counts.get("sent", 0) == 2 and counts.get("failed", 0) == 1

        await wait_until(settled, 60, "two sent and one failed")

    rows = {
        r["email"]: r
        for r in await db.fetch("SELECT email, status, attempts, last_code FROM messages")
    }
    assert rows["ok@example.org"]["attempts"] == 1
    assert rows["tempfail2-a@example.org"]["status"] == "sent"
    assert rows["tempfail2-a@example.org"]["attempts"] == 3
    assert rows["reject-b@example.org"]["status"] == "failed"
    assert rows["reject-b@example.org"]["last_code"] == 550
    assert sorted(r.recipient for r in smtp_peer.handler.received) == [
        "ok@example.org",
        "tempfail2-a@example.org",
    ]

    async def attempts_recorded() -> bool:
        return bool(await db.fetchval("SELECT count(*) = 5 FROM send_attempts"))

    await wait_until(attempts_recorded, 10, "every attempt recorded")
    outcomes = await db.fetch(
        """
        SELECT a.outcome, a.smtp_code FROM send_attempts a JOIN messages m ON m.id = a.message_id
        WHERE m.email = 'tempfail2-a@example.org' ORDER BY a.attempt
        """
    )
    assert [(r["outcome"], r["smtp_code"]) for r in outcomes] == [
        ("deferred", 451),
        ("deferred", 451),
        ("sent", 250),
    ]


async def test_rejected_login_pauses_the_account_until_an_operator_fixes_it(
    stack: Stack, db: "asyncpg.Connection[asyncpg.Record]", smtp_peer: SmtpPeer
) -> None:
    await stack.start_api()
    await stack.start_dispatcher()
    await stack.start_sender()
    async with aclosing(await stack.admin_client()) as client:
        account = await create_account(client, "badauth", smtp_peer.port, smtp_password="wrong")
        emails = [f"p{i}@example.org" for i in range(5)]
        campaign_id = await start_campaign(client, [account["id"]], emails)

        async def paused() -> bool:
            state = (await client.get(f"/api/admin/accounts/{account['id']}")).json()
            return bool(state["status"] == "paused")

        await wait_until(paused, 30, "the account paused")
        state = (await client.get(f"/api/admin/accounts/{account['id']}")).json()
        assert "authentication" in state["status_reason"].lower()
        await asyncio.sleep(1.0)
        counts = await campaign_counts(client, campaign_id)
        assert counts.get("sent", 0) == 0
        assert smtp_peer.handler.received == []
        event = await db.fetchval(
            "SELECT count(*) FROM events WHERE type = 'account-paused' AND account_id = $1",
            account["id"],
        )
        assert event == 1

        response = await client.patch(
            f"/api/admin/accounts/{account['id']}",
            json={"smtp_password": "right", "status": "active"},
        )
        assert response.status_code == 200, response.text

        async def all_sent() -> bool:
            return (await campaign_counts(client, campaign_id)).get("sent", 0) == 5

        await wait_until(all_sent, 30, "every message sent after the fix")
    assert len(smtp_peer.handler.received) == 5


async def test_sigterm_stops_every_service_cleanly_without_losing_or_repeating_a_message(
    stack: Stack, db: "asyncpg.Connection[asyncpg.Record]"
) -> None:
    sink = await stack.start_sink()
    info = {"MAILFLEET_LOG_LEVEL": "INFO"}
    api = await stack.start_api(info)
    dispatcher = await stack.start_dispatcher(info)
    sender = await stack.start_sender(info)
    async with aclosing(await stack.admin_client()) as client:
        accounts = [
            await create_account(client, f"acct{i}", sink.port, min_gap_ms=10) for i in range(2)
        ]
        emails = [f"person{i}@example.org" for i in range(400)]
        campaign_id = await start_campaign(client, [a["id"] for a in accounts], emails)

        async def some_sent() -> bool:
            return (await campaign_counts(client, campaign_id)).get("sent", 0) >= 50

        await wait_until(some_sent, 60, "50 messages sent")
        assert await sender.stop() == 0
        assert await dispatcher.stop() == 0
        in_flight = await db.fetchval("SELECT count(*) FROM messages WHERE status = 'sending'")
        assert in_flight == 0
        await dispatcher.start()
        await stack.start_sender(info)

        async def all_sent() -> bool:
            return (await campaign_counts(client, campaign_id)).get("sent", 0) == 400

        await wait_until(all_sent, 90, "every message sent after the restart")
    records = await sink.wait_for_records(400)
    await asyncio.sleep(1.0)
    records = sink.records()
    assert len(records) == len({r["message_id"] for r in records}) == 400
    assert await api.stop() == 0
    # Every service logs JSON lines only (the harness marks each start with a "---" line).
    for service in stack.services:
        if service is sink:
            continue
        for line in service.log_path.read_text().splitlines():
            if line and not line.startswith("--- "):
                assert isinstance(json.loads(line), dict), f"{service.name}: {line}"
