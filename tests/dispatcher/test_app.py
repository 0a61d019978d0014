import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

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
from mailfleet_dispatcher.main import create_app
from mailfleet_dispatcher.settings import Settings

from .conftest import Conn, insert_account, insert_campaign, insert_messages, next_body

pytestmark = pytest.mark.rabbit


@pytest.fixture
async def app(db: Conn, settings: Settings) -> AsyncIterator[AsgiFastStream]:
    # Driven through the ASGI lifespan protocol in a task of its own, as uvicorn does: the
    # app's task group must be entered and left by the same task.
    app = create_app(settings)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = asyncio.create_task(
        app({"type": "lifespan"}, inbox.get, outbox.put)  # type: ignore[arg-type]
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        assert await eventually(lambda: ready(app), wait_s=10)
        yield app
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await lifespan


async def ready(app: AsgiFastStream) -> bool:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher") as client:
        return (await client.get("/ready")).status_code == 200


async def eventually(check: Any, wait_s: float = 5.0) -> Any:
    """Poll `check` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.05)


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

    await broker.publish(
        RecipientsEnqueued(campaign_id=campaign, count=150),
        exchange=topology.EVENTS,
        routing_key=topology.ENQUEUE_KEY,
        persist=True,
    )
    first = SendBatch.model_validate_json(await next_body(queue))
    second = SendBatch.model_validate_json(await next_body(queue))

    assert first.account_id == second.account_id == account
    assert first.message_ids + second.message_ids == ids
    assert len(first.message_ids) == settings.dispatcher.batch_size


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
    dead = await broker.declare_queue(topology.DEAD_LETTER_QUEUE)
    await dead.purge()
    marker = uuid4().hex

    await broker.publish(
        body,
        exchange=topology.EVENTS,
        routing_key=routing_key,
        persist=True,
        message_id=marker,
        content_type="application/json",
    )

    message = None
    deadline = asyncio.get_running_loop().time() + 5
    while message is None and asyncio.get_running_loop().time() < deadline:
        message = await dead.get(no_ack=True, fail=False)
        await asyncio.sleep(0.05)
    assert message is not None
    assert (message.message_id, bytes(message.body)) == (marker, body)


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

    message = None
    deadline = asyncio.get_running_loop().time() + 5
    while message is None and asyncio.get_running_loop().time() < deadline:
        message = await dead.get(no_ack=True, fail=False)
        await asyncio.sleep(0.05)
    assert message is not None
    assert await db.fetchval("SELECT count(*) FROM send_attempts") == 0


async def test_ops_endpoints_report_health_readiness_and_metrics(app: AsgiFastStream) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher") as client:
        health = await client.get("/health")
        ready = await client.get("/ready")
        metrics = await client.get("/metrics")

    assert (health.status_code, ready.status_code) == (200, 200)
    assert "mailfleet_dispatcher_tick_seconds" in metrics.text
