"""Delivery flows through real PostgreSQL, RabbitMQ and an SMTP server."""

from typing import Any

from mailfleet_common import topology
from mailfleet_sender.replica import SenderReplica
from mailfleet_sender.settings import Settings
from prometheus_client import REGISTRY

from tests.sender.conftest import (
    deliver_one,
    drain_queue,
    insert_account,
    insert_campaign,
    insert_messages,
    publish_batch,
    publish_raw,
    reassign,
    running_sender,
    sender_idle,
    settled,
    statuses,
    wait_for,
)
from tests.smtp_peer import SmtpPeer


async def _attempts_for(rabbit_url: str, ids: list[int], count: int) -> list[dict[str, Any]]:
    """The published attempts of these messages, once `count` of them have arrived."""
    found: list[dict[str, Any]] = []

    async def collect() -> bool:
        for batch in await drain_queue(rabbit_url, topology.SEND_ATTEMPT_QUEUE.name):
            found.extend(a for a in batch.get("attempts", []) if a["message_id"] in ids)
        return len(found) >= count

    await wait_for(collect)
    return sorted(found, key=lambda a: (a["message_id"], a["attempt"]))


async def test_message_is_delivered_once_with_a_stable_message_id(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    # Message ids restart with each test: attempts earlier tests left would match them.
    await drain_queue(rabbit_url, topology.SEND_ATTEMPT_QUEUE.name)
    ids = await deliver_one(db, smtp_peer.port, rabbit_url, "one@example.org", "sent")

    received = smtp_peer.handler.to("one@example.org")
    assert len(received) == 1
    row = await db.fetchrow("SELECT * FROM messages WHERE id = $1", ids[0])
    assert row["attempts"] == 1
    assert row["sender_replica"] == sender.replica_id
    assert row["sent_at"] is not None
    assert row["message_id"] == received[0].message_id
    assert row["message_id"].endswith("@fleet.example.com>")
    assert received[0].message["Subject"] == "Hello Reader"
    attempts = await _attempts_for(rabbit_url, ids, 1)
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "sent")]


async def test_temporary_failures_are_retried_with_the_same_message_id_until_sent(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    await drain_queue(rabbit_url, topology.SEND_ATTEMPT_QUEUE.name)
    account = await insert_account(db, smtp_peer.port)
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, account, ["tempfail2-a@example.org"])

    for _ in range(2):
        await publish_batch(rabbit_url, account, ids)
        await wait_for(lambda: settled(db, ids, "deferred"))
        row = await db.fetchrow("SELECT * FROM messages WHERE id = $1", ids[0])
        assert row["account_id"] is None  # the dispatcher picks the account again
        assert row["last_code"] == 451
        assert row["next_attempt_at"] > row["updated_at"]
        await reassign(db, account, ids)
    first_message_id = row["message_id"]
    await publish_batch(rabbit_url, account, ids)
    await wait_for(lambda: settled(db, ids))

    row = await db.fetchrow("SELECT * FROM messages WHERE id = $1", ids[0])
    assert row["attempts"] == 3
    assert row["message_id"] == first_message_id
    assert [r.message_id for r in smtp_peer.handler.to("tempfail2-a@example.org")] == [
        first_message_id
    ]
    attempts = await _attempts_for(rabbit_url, ids, 3)
    assert [(a["attempt"], a["outcome"], a["smtp_code"]) for a in attempts] == [
        (1, "deferred", 451),
        (2, "deferred", 451),
        (3, "sent", 250),
    ]


async def test_no_reply_once_data_began_leaves_the_message_uncertain_and_never_resent(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    # The server takes the message but its reply comes after the sender's timeout (5 s):
    # retrying could deliver it twice, so it is `uncertain`, for an operator to resolve.
    smtp_peer.handler.late_reply_s = 8
    account = await insert_account(db, smtp_peer.port)
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, account, ["unanswered-a@example.org"])
    await publish_batch(rabbit_url, account, ids)
    await wait_for(lambda: settled(db, ids, "uncertain"), within=15)
    row = await db.fetchrow("SELECT attempts, last_error FROM messages WHERE id = $1", ids[0])
    assert row["attempts"] == 1
    assert "no reply once DATA began" in row["last_error"]

    await publish_batch(rabbit_url, account, ids)  # a repeated command changes nothing
    await wait_for(lambda: sender_idle(sender))
    assert await statuses(db, ids) == ["uncertain"]
    assert len(smtp_peer.handler.to("unanswered-a@example.org")) == 1
    # The account goes on, on a new session.
    more = await insert_messages(db, campaign, account, ["after-late@example.org"])
    await publish_batch(rabbit_url, account, more)
    await wait_for(lambda: settled(db, more))


async def test_permanent_refusal_fails_the_message_at_once(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    ids = await deliver_one(db, smtp_peer.port, rabbit_url, "reject-x@example.org", "failed")

    row = await db.fetchrow("SELECT * FROM messages WHERE id = $1", ids[0])
    assert row["last_code"] == 550
    assert "No such user" in row["last_error"]


async def test_mailbox_full_is_deferred_not_failed(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    ids = await deliver_one(db, smtp_peer.port, rabbit_url, "full-x@example.org", "deferred")

    assert await db.fetchval("SELECT last_code FROM messages WHERE id = $1", ids[0]) == 552


async def test_last_allowed_attempt_that_fails_temporarily_fails_the_message(
    settings: Settings, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    account = await insert_account(db, smtp_peer.port)
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, account, ["tempfail9-x@example.org"])
    await db.execute("UPDATE messages SET attempts = 4 WHERE id = $1", ids[0])

    async with running_sender(settings):
        await publish_batch(rabbit_url, account, ids)
        await wait_for(lambda: settled(db, ids, "failed"))

    assert await db.fetchval("SELECT attempts FROM messages WHERE id = $1", ids[0]) == 5


async def test_refused_login_pauses_the_account_and_requeues_the_message(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str, crypto_keys: str
) -> None:
    account = await insert_account(
        db, smtp_peer.port, crypto_keys=crypto_keys, username="fleet", password="wrong"
    )
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, account, ["a@example.org", "b@example.org"])
    await db.execute(
        "INSERT INTO account_daily_usage (account_id, day, reserved) "
        "VALUES ($1, (now() AT TIME ZONE 'UTC')::date, 2)",
        account,
    )
    await drain_queue(rabbit_url, topology.ACCOUNT_PAUSED_QUEUE.name)

    await publish_batch(rabbit_url, account, ids)
    await wait_for(lambda: settled(db, ids, "queued"))

    acc = await db.fetchrow("SELECT status, status_reason FROM accounts WHERE id = $1", account)
    assert acc["status"] == "paused"
    assert "535" in acc["status_reason"]
    # Nothing was sent: both go back to the queue, with no attempt counted.
    rows = await db.fetch("SELECT account_id, attempts FROM messages ORDER BY id")
    assert [(r["account_id"], r["attempts"]) for r in rows] == [(None, 0), (None, 0)]
    reserved = await db.fetchval(
        "SELECT reserved FROM account_daily_usage WHERE account_id = $1", account
    )
    assert reserved == 0
    events = await wait_for(lambda: drain_queue(rabbit_url, topology.ACCOUNT_PAUSED_QUEUE.name))
    assert [e["account_id"] for e in events] == [str(account)]
    assert smtp_peer.handler.received == []


async def test_correct_password_is_used_to_log_in(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str, crypto_keys: str
) -> None:
    account = await insert_account(
        db, smtp_peer.port, crypto_keys=crypto_keys, username="fleet", password="s3cret"
    )
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, account, ["a@example.org"])

    await publish_batch(rabbit_url, account, ids)
    await wait_for(lambda: settled(db, ids))

    assert smtp_peer.handler.logins == ["fleet"]


async def test_repeated_commands_never_send_a_message_twice(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    account = await insert_account(db, smtp_peer.port)
    campaign = await insert_campaign(db)
    emails = [f"r{i}@example.org" for i in range(20)]
    ids = await insert_messages(db, campaign, account, list(emails))

    for _ in range(3):
        await publish_batch(rabbit_url, account, ids)
    await publish_batch(rabbit_url, account, ids + ids[::-1])
    await wait_for(lambda: settled(db, ids))
    await publish_batch(rabbit_url, account, ids)
    await wait_for(lambda: sender_idle(sender))

    assert sorted(r.recipient for r in smtp_peer.handler.received) == sorted(emails)
    assert (
        await db.fetchval("SELECT max(attempts) FROM messages WHERE id = ANY($1::bigint[])", ids)
        == 1
    )


async def test_cancelled_campaign_and_paused_account_messages_are_not_sent(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    account = await insert_account(db, smtp_peer.port)
    paused = await insert_account(db, smtp_peer.port, status="paused")
    live = await insert_campaign(db)
    cancelled = await insert_campaign(db, status="cancelled")
    kept = await insert_messages(db, cancelled, account, ["c@example.org"])
    held = await insert_messages(db, live, paused, ["p@example.org"])
    marker = await insert_messages(db, live, account, ["marker@example.org"])

    await publish_batch(rabbit_url, paused, held)
    await publish_batch(rabbit_url, account, kept + marker)
    await wait_for(lambda: settled(db, marker))
    await wait_for(lambda: sender_idle(sender))

    assert await statuses(db, kept + held) == ["assigned", "assigned"]
    assert [r.recipient for r in smtp_peer.handler.received] == ["marker@example.org"]


async def test_one_smtp_session_carries_many_messages(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    account = await insert_account(db, smtp_peer.port)
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, account, [f"m{i}@example.org" for i in range(30)])

    await publish_batch(rabbit_url, account, ids[:10])
    await publish_batch(rabbit_url, account, ids[10:])
    await wait_for(lambda: settled(db, ids))

    assert len(smtp_peer.handler.received) == 30
    assert len(smtp_peer.handler.sessions()) == 1
    # In order, as commanded.
    assert [r.recipient for r in smtp_peer.handler.received] == [
        f"m{i}@example.org" for i in range(30)
    ]


async def test_a_template_that_fails_to_render_fails_the_message_with_the_reason(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    account = await insert_account(db, smtp_peer.port)
    campaign = await insert_campaign(db, subject="{{ 1 / zero }}")
    ids = await insert_messages(db, campaign, account, ["t@example.org"], {"zero": 0})

    await publish_batch(rabbit_url, account, ids)
    await wait_for(lambda: settled(db, ids, "failed"))

    assert "render" in await db.fetchval("SELECT last_error FROM messages WHERE id = $1", ids[0])


async def test_malformed_command_ends_in_the_dead_letter_queue(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    account = await insert_account(db, smtp_peer.port)
    await wait_for(lambda: _subscribed(sender, account))
    await drain_queue(rabbit_url, topology.DEAD_LETTER_QUEUE.name)

    await publish_raw(rabbit_url, account, b'{"account_id": "nope"}')

    dead = await wait_for(lambda: drain_queue(rabbit_url, topology.DEAD_LETTER_QUEUE.name))
    assert dead == [{"account_id": "nope"}]


async def _subscribed(sender: SenderReplica, account: Any) -> bool:
    return account in sender.subscriptions


async def test_account_config_change_reopens_the_smtp_session(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    other = SmtpPeer().start()
    try:
        account = await insert_account(db, smtp_peer.port)
        campaign = await insert_campaign(db)
        ids = await insert_messages(db, campaign, account, ["a@example.org", "b@example.org"])
        await publish_batch(rabbit_url, account, ids[:1])
        await wait_for(lambda: settled(db, ids[:1]))

        await db.execute(
            "UPDATE accounts SET smtp_port = $2, updated_at = now() WHERE id = $1",
            account,
            other.port,
        )
        await wait_for(lambda: _configured_port(sender, account, other.port))
        await publish_batch(rabbit_url, account, ids[1:])
        await wait_for(lambda: settled(db, ids))

        assert [r.recipient for r in other.handler.received] == ["b@example.org"]
    finally:
        other.stop()


async def _configured_port(sender: SenderReplica, account: Any, port: int) -> bool:
    subscription = sender.subscriptions.get(account)
    return subscription is not None and subscription.account.row.smtp_port == port


def _delivery_latency(sample: str) -> float:
    value = REGISTRY.get_sample_value(f"mailfleet_delivery_latency_seconds_{sample}")
    return value or 0.0


async def test_the_time_from_enqueue_to_acceptance_is_observed_for_accepted_messages_only(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    account = await insert_account(db, smtp_peer.port)
    campaign = await insert_campaign(db)
    ids = await insert_messages(
        db, campaign, account, ["latency@example.org", "reject-latency@example.org"]
    )
    # Enqueued ten minutes ago (a daily limit held them back, say).
    await db.execute(
        "UPDATE messages SET created_at = now() - interval '10 minutes' WHERE id = ANY($1)", ids
    )
    count_before, sum_before = _delivery_latency("count"), _delivery_latency("sum")

    await publish_batch(rabbit_url, account, ids)
    await wait_for(lambda: settled(db, ids[:1]))
    await wait_for(lambda: settled(db, ids[1:], "failed"))

    assert _delivery_latency("count") - count_before == 1
    assert 600 <= _delivery_latency("sum") - sum_before < 660
