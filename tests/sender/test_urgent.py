"""Urgent notices (UrgentSends): a noticed message goes before the account's backlog, once."""

import asyncio
import time
import uuid
from typing import Any

import aio_pika
from mailfleet_common import topology
from mailfleet_common.messages import UrgentSends
from mailfleet_sender.replica import SenderReplica

from tests.sender.conftest import (
    deliver_one,
    insert_account,
    insert_campaign,
    insert_messages,
    publish_batch,
    sender_idle,
    settled,
    wait_for,
)
from tests.smtp_peer import SmtpPeer


async def publish_notice(rabbit_url: str, account_id: uuid.UUID, ids: list[int]) -> None:
    """What the dispatcher's transactional lane publishes once it has assigned `ids`."""
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            topology.URGENT.name, type=topology.URGENT.type.value, durable=True
        )
        notice = UrgentSends(account_id=account_id, message_ids=ids)
        await exchange.publish(aio_pika.Message(notice.model_dump_json().encode()), "")


async def account_and_campaign(db: Any, message_id: int) -> tuple[uuid.UUID, uuid.UUID]:
    row = await db.fetchrow(
        "SELECT account_id, campaign_id FROM messages WHERE id = $1", message_id
    )
    return row["account_id"], row["campaign_id"]


async def subscribed(sender: SenderReplica, account_id: uuid.UUID) -> bool:
    return account_id in sender.subscriptions


async def test_a_message_noticed_before_the_replica_takes_the_account_goes_before_its_backlog(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    # The replica has never been handed a command of the account (a standby, or the next in
    # line during a hand-over) when the notice comes; then the account's look-ahead reaches it
    # with the message's own command last: 300 messages, one every 20 ms, take 6 s.
    account = await insert_account(db, smtp_peer.port, min_gap_ms=20)
    campaign = await insert_campaign(db)
    backlog = await insert_messages(db, campaign, account, [f"r{i}@ex.org" for i in range(300)])
    [urgent] = await insert_messages(db, campaign, account, ["urgent@example.org"])
    await wait_for(lambda: subscribed(sender, account))

    await publish_notice(rabbit_url, account, [urgent])
    started = time.monotonic()
    for start in range(0, len(backlog), 100):
        await publish_batch(rabbit_url, account, backlog[start : start + 100])
    await publish_batch(rabbit_url, account, [urgent])

    await wait_for(lambda: settled(db, [urgent]), within=10, interval=0.02)
    assert time.monotonic() - started < 2.0
    order = [r.recipient for r in smtp_peer.handler.received]
    assert order.index("urgent@example.org") < 50

    await wait_for(lambda: settled(db, backlog), within=30)
    await wait_for(lambda: sender_idle(sender))
    assert len(smtp_peer.handler.to("urgent@example.org")) == 1
    assert len(smtp_peer.handler.received) == 301


async def test_a_message_noticed_while_the_account_is_idle_is_sent_at_once_and_once(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    [first] = await deliver_one(db, smtp_peer.port, rabbit_url, "first@example.org")
    account, campaign = await account_and_campaign(db, first)
    await asyncio.sleep(1.2)  # idle for a while: no command in hand or about to come

    [urgent] = await insert_messages(db, campaign, account, ["urgent@example.org"])
    await publish_notice(rabbit_url, account, [urgent])
    # Sent on the notice alone, before its command is even published.
    await wait_for(lambda: settled(db, [urgent]), within=1.5, interval=0.02)
    await publish_batch(rabbit_url, account, [urgent])
    await wait_for(lambda: sender_idle(sender))
    assert len(smtp_peer.handler.to("urgent@example.org")) == 1


async def test_a_notice_for_a_message_already_sent_sends_nothing_more(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    ids = await deliver_one(db, smtp_peer.port, rabbit_url, "once@example.org")
    account, _ = await account_and_campaign(db, ids[0])

    # A late or repeated notice (the dispatcher notices again what looks unclaimed).
    for _ in range(2):
        await publish_notice(rabbit_url, account, ids)
    await wait_for(lambda: sender_idle(sender))
    await asyncio.sleep(0.3)
    assert len(smtp_peer.handler.to("once@example.org")) == 1
