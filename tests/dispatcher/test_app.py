import asyncio
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import httpx
import pytest
from faststream.asgi import AsgiFastStream
from faststream.rabbit import RabbitBroker
from mailfleet_common import topology
from mailfleet_common.messages import (
    AccountPaused,
    RecipientsEnqueued,
    SendAttempt,
    SendAttempts,
    SendBatch,
)
from mailfleet_dispatcher.settings import Settings

from .conftest import (
    Conn,
    eventually,
    insert_account,
    insert_campaign,
    insert_messages,
    is_dead_lettered,
    next_body,
    next_dead_letter,
)

pytestmark = pytest.mark.rabbit


async def announce_enqueued(broker: RabbitBroker, campaign: UUID, count: int) -> None:
    """What the API publishes once recipients are enqueued: the dispatcher ticks at once."""
    await broker.publish(
        RecipientsEnqueued(campaign_id=campaign, count=count),
        exchange=topology.EVENTS,
        routing_key=topology.ENQUEUE_KEY,
        persist=True,
    )


def attempts_for(message_id: int, campaign: UUID, account: UUID) -> SendAttempts:
    now = datetime.now(UTC)
    return SendAttempts(
        attempts=[
            SendAttempt(
                message_id=message_id,
                campaign_id=campaign,
                account_id=account,
                attempt=1,
                outcome="deferred",
                smtp_code=451,
                detail="try later",
                attempted_at=now,
            ),
            SendAttempt(
                message_id=message_id,
                campaign_id=campaign,
                account_id=account,
                attempt=2,
                outcome="sent",
                smtp_code=250,
                attempted_at=now,
            ),
        ]
    )


async def test_send_batches_arrive_on_the_accounts_own_queue(
    app: AsgiFastStream, db: Conn, broker: RabbitBroker, settings: Settings
) -> None:
    account = await insert_account(db)
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, 150)
    queue = await broker.declare_queue(topology.send_queue(account))

    await announce_enqueued(broker, campaign, 150)
    first = SendBatch.model_validate_json(await next_body(queue))
    second = SendBatch.model_validate_json(await next_body(queue))

    assert first.account_id == second.account_id == account
    assert first.message_ids + second.message_ids == ids
    assert len(first.message_ids) == settings.dispatcher.batch_size


async def test_a_pooled_campaign_is_commanded_only_to_its_tagged_accounts_queues(
    app: AsgiFastStream, db: Conn, broker: RabbitBroker, settings: Settings
) -> None:
    tagged = [await insert_account(db, tags=["eu"]), await insert_account(db, tags=["eu", "x"])]
    untagged = await insert_account(db, tags=["us"])
    campaign = await insert_campaign(db, tags=["eu"])
    queues = {a: await broker.declare_queue(topology.send_queue(a)) for a in [*tagged, untagged]}
    ids = await insert_messages(db, campaign, 40)

    await announce_enqueued(broker, campaign, 40)
    batches = [SendBatch.model_validate_json(await next_body(queues[a])) for a in tagged]

    assert sorted(i for b in batches for i in b.message_ids) == ids
    assert [b.account_id for b in batches] == tagged
    assert await queues[untagged].get(no_ack=True, fail=False) is None


async def test_commands_reach_an_account_whose_queue_was_deleted_after_its_first_command(
    app: AsgiFastStream, db: Conn, broker: RabbitBroker, rabbit_url: str
) -> None:
    account = await insert_account(db)
    campaign = await insert_campaign(db)
    first_ids = await insert_messages(db, campaign, 1)
    await announce_enqueued(broker, campaign, 1)
    # No queue was declared beforehand: the dispatcher declares it on the first command.
    queue = await broker.declare_queue(topology.send_queue(account))
    first = SendBatch.model_validate_json(await next_body(queue))
    assert first.message_ids == first_ids

    # An operator (or a policy) deletes the queue: the exchange can no longer route to it.
    await queue.delete(if_unused=False, if_empty=False)
    more = await insert_messages(db, campaign, 2)
    await announce_enqueued(broker, campaign, 2)

    async def next_command() -> bytes | None:
        # A connection of its own, asking the broker itself: a passive declare of a queue
        # that does not exist closes the channel.
        connection = await aio_pika.connect(rabbit_url)
        async with connection:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(
                    topology.send_queue_name(account), passive=True
                )
            except aio_pika.exceptions.ChannelClosed:
                return None
            message = await declared.get(no_ack=True, fail=False)
            return None if message is None else bytes(message.body)

    second = SendBatch.model_validate_json(await eventually(next_command))
    assert second.message_ids == more


async def test_recorder_writes_attempts_events_and_usage_once_despite_redelivery(
    app: AsgiFastStream, db: Conn, broker: RabbitBroker
) -> None:
    account = await insert_account(db)
    campaign = await insert_campaign(db, status="paused")
    [message] = await insert_messages(db, campaign, 1, status="sent")
    report = attempts_for(message, campaign, account)

    for _ in range(2):
        await broker.publish(
            report, exchange=topology.EVENTS, routing_key=topology.SEND_ATTEMPT_KEY, persist=True
        )

    async def all_recorded() -> bool:
        return await db.fetchval("SELECT count(*) FROM events") >= 2

    assert await eventually(all_recorded)
    await asyncio.sleep(0.3)  # let the redelivered copy be processed too
    attempts = await db.fetch("SELECT attempt, outcome FROM send_attempts ORDER BY attempt")
    assert [(r["attempt"], r["outcome"]) for r in attempts] == [(1, "deferred"), (2, "sent")]
    events = await db.fetch("SELECT type FROM events ORDER BY type")
    assert [r["type"] for r in events] == ["deferred", "sent"]
    usage = await db.fetchrow("SELECT sent, failed FROM account_daily_usage")
    assert usage is not None
    assert (usage["sent"], usage["failed"]) == (1, 0)


async def test_account_pauses_are_recorded_as_events(
    app: AsgiFastStream, db: Conn, broker: RabbitBroker
) -> None:
    account = await insert_account(db, status="paused")
    event = AccountPaused(account_id=account, reason="535 bad login", paused_at=datetime.now(UTC))

    await broker.publish(
        event, exchange=topology.EVENTS, routing_key=topology.ACCOUNT_PAUSED_KEY, persist=True
    )

    async def recorded() -> Any:
        return await db.fetchrow(
            "SELECT account_id, data FROM events WHERE type = 'account-paused'"
        )

    row = await eventually(recorded)
    assert row is not None
    assert row["account_id"] == account
    assert json.loads(row["data"]) == {"reason": "535 bad login"}


@pytest.mark.parametrize(
    ("routing_key", "body"),
    [
        (topology.SEND_ATTEMPT_KEY, b"not json at all"),
        (topology.SEND_ATTEMPT_KEY, b'{"attempts": []}'),
        (topology.ACCOUNT_PAUSED_KEY, b'{"account_id": "nope"}'),
    ],
)
async def test_malformed_messages_end_up_in_the_dead_letter_queue(
    app: AsgiFastStream, broker: RabbitBroker, routing_key: str, body: bytes
) -> None:
    assert await is_dead_lettered(broker, routing_key, body)


async def test_attempts_for_an_unknown_account_are_dead_lettered_not_retried(
    app: AsgiFastStream, db: Conn, broker: RabbitBroker
) -> None:
    dead = await broker.declare_queue(topology.DEAD_LETTER_QUEUE)
    await dead.purge()
    campaign = await insert_campaign(db)

    await broker.publish(
        attempts_for(1, campaign, uuid4()),
        exchange=topology.EVENTS,
        routing_key=topology.SEND_ATTEMPT_KEY,
        persist=True,
    )

    assert await next_dead_letter(dead) is not None
    assert await db.fetchval("SELECT count(*) FROM send_attempts") == 0


async def test_ops_endpoints_report_health_readiness_and_metrics(app: AsgiFastStream) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher") as client:
        health = await client.get("/health")
        ready = await client.get("/ready")
        metrics = await client.get("/metrics")

    assert (health.status_code, ready.status_code) == (200, 200)
    assert "mailfleet_dispatcher_tick_seconds" in metrics.text
