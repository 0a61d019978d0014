"""Tracking hits from the bus recorded as events, through the running dispatcher."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from faststream.asgi import AsgiFastStream
from faststream.rabbit import RabbitBroker
from mailfleet_common import topology
from mailfleet_common.messages import TrackingHit, TrackingHits, TrackingKind
from prometheus_client import REGISTRY

from .conftest import (
    Conn,
    eventually,
    insert_account,
    insert_campaign,
    insert_messages,
    is_dead_lettered,
)

pytestmark = pytest.mark.rabbit

T0 = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)


def hit(message_id: int, n: int, **fields: Any) -> TrackingHit:
    return TrackingHit(
        key=f"{uuid4().hex[:8]}-{n}",
        message_id=message_id,
        occurred_at=T0 + timedelta(seconds=n),
        **fields,
    )


async def publish(broker: RabbitBroker, kind: TrackingKind, hits: list[TrackingHit]) -> None:
    await broker.publish(
        TrackingHits(kind=kind, hits=hits),
        exchange=topology.EVENTS,
        routing_key=kind,
        persist=True,
    )


async def count_events(db: Conn, kind: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM events WHERE type = $1", kind))


async def recorded(db: Conn, kind: str, n: int) -> bool:
    """Wait until `n` events of `kind` are there."""

    async def enough() -> bool:
        return await count_events(db, kind) >= n

    return bool(await eventually(enough))


def hits_counted(kind: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "mailfleet_dispatcher_tracking_hits_total", {"kind": kind, "outcome": outcome}
    )
    return value or 0.0


async def test_a_batch_of_each_kind_is_recorded_with_campaign_account_and_details(
    app: AsgiFastStream, db: Conn, broker: RabbitBroker
) -> None:
    account = await insert_account(db)
    campaign = await insert_campaign(db, status="completed")
    first, second = await insert_messages(db, campaign, 2, status="sent", account_id=account)
    opens = [
        hit(first, 1, ip="192.0.2.7", user_agent="Thunderbird"),
        hit(second, 2, ip="198.51.100.1", machine=True, machine_reason="apple-mpp"),
    ]
    click = hit(first, 3, url="https://example.com/offer", user_agent="Firefox")
    unsubscribe = hit(second, 4)

    await publish(broker, "opened", opens)
    await publish(broker, "clicked", [click])
    await publish(broker, "unsubscribed", [unsubscribe])

    assert await recorded(db, "opened", 2)
    assert await recorded(db, "clicked", 1)
    assert await recorded(db, "unsubscribed", 1)
    rows = await db.fetch(
        """
        SELECT type, occurred_at, campaign_id, account_id, message_id, event_key, data
        FROM events ORDER BY occurred_at
        """
    )
    assert [(r["type"], r["message_id"], r["event_key"], r["occurred_at"]) for r in rows] == [
        ("opened", first, opens[0].key, opens[0].occurred_at),
        ("opened", second, opens[1].key, opens[1].occurred_at),
        ("clicked", first, click.key, click.occurred_at),
        ("unsubscribed", second, unsubscribe.key, unsubscribe.occurred_at),
    ]
    assert {(r["campaign_id"], r["account_id"]) for r in rows} == {(campaign, account)}
    assert [json.loads(r["data"]) for r in rows] == [
        {"ip": "192.0.2.7", "user_agent": "Thunderbird", "machine": False},
        {"ip": "198.51.100.1", "machine": True, "machine_reason": "apple-mpp"},
        {"url": "https://example.com/offer", "user_agent": "Firefox", "machine": False},
        {"machine": False},
    ]


async def test_a_redelivered_batch_is_recorded_once(
    app: AsgiFastStream, db: Conn, broker: RabbitBroker
) -> None:
    campaign = await insert_campaign(db, status="completed")
    ids = await insert_messages(db, campaign, 3, status="sent", account_id=await insert_account(db))
    batch = [hit(message_id, n, url="https://example.com/") for n, message_id in enumerate(ids)]
    duplicates_before = hits_counted("clicked", "duplicate")

    await publish(broker, "clicked", batch)
    await publish(broker, "clicked", batch)
    # One consumer takes the queue in order: once this is in, the copy before it was handled.
    await publish(broker, "clicked", [hit(ids[0], 99, url="https://example.com/later")])

    assert await recorded(db, "clicked", 4)
    assert await count_events(db, "clicked") == 4
    assert hits_counted("clicked", "duplicate") - duplicates_before == 3


async def test_hits_for_unknown_messages_are_dropped_and_counted(
    app: AsgiFastStream, db: Conn, broker: RabbitBroker
) -> None:
    campaign = await insert_campaign(db, status="completed")
    [known] = await insert_messages(
        db, campaign, 1, status="sent", account_id=await insert_account(db)
    )
    unknown_before = hits_counted("opened", "unknown-message")

    await publish(broker, "opened", [hit(known + 1000, 1), hit(known, 2), hit(known + 1001, 3)])

    assert await recorded(db, "opened", 1)
    assert await db.fetchval("SELECT array_agg(message_id) FROM events") == [known]

    async def counted() -> bool:
        return hits_counted("opened", "unknown-message") - unknown_before == 2

    assert await eventually(counted)


@pytest.mark.parametrize(
    ("routing_key", "body"),
    [
        (topology.OPENED_KEY, b"not json at all"),
        (topology.CLICKED_KEY, b'{"kind": "clicked", "hits": []}'),
        (
            topology.UNSUBSCRIBED_KEY,
            b'{"kind": "unsubscribed", "hits": [{"key": "k", "message_id": 0,'
            b' "occurred_at": "2030-03-01T12:00:00Z"}]}',
        ),
        (topology.OPENED_KEY, b'{"kind": "bounced", "hits": []}'),
    ],
)
async def test_invalid_tracking_payloads_are_dead_lettered(
    app: AsgiFastStream, db: Conn, broker: RabbitBroker, routing_key: str, body: bytes
) -> None:
    assert await is_dead_lettered(broker, routing_key, body)
    assert await db.fetchval("SELECT count(*) FROM events") == 0


def latency(kind: str, sample: str) -> float:
    value = REGISTRY.get_sample_value(
        f"mailfleet_tracking_record_latency_seconds_{sample}", {"kind": kind}
    )
    return value or 0.0


async def test_the_time_from_hit_to_record_is_observed_once_per_new_hit(
    app: AsgiFastStream, db: Conn, broker: RabbitBroker
) -> None:
    campaign = await insert_campaign(db, status="completed")
    ids = await insert_messages(db, campaign, 2, status="sent", account_id=await insert_account(db))
    # Hits the tracker took 30 s ago (a broker outage held them back).
    then = datetime.now(UTC) - timedelta(seconds=30)
    batch = [
        TrackingHit(key=f"{uuid4().hex[:8]}-{n}", message_id=i, occurred_at=then)
        for n, i in enumerate(ids)
    ]
    count_before, sum_before = latency("click", "count"), latency("click", "sum")
    within_60_before = REGISTRY.get_sample_value(
        "mailfleet_tracking_record_latency_seconds_bucket", {"kind": "click", "le": "60.0"}
    )

    await publish(broker, "clicked", batch)
    await publish(broker, "clicked", batch)  # a redelivery records nothing, observes nothing
    await publish(broker, "clicked", [hit(ids[0], 1, url="https://example.com/")])

    assert await recorded(db, "clicked", 3)

    async def observed() -> bool:
        return latency("click", "count") - count_before == 3

    assert await eventually(observed)
    # Two of 30 s and more, and one from 2030 (in the future: observed as 0).
    assert 60 <= latency("click", "sum") - sum_before < 80
    within_60 = REGISTRY.get_sample_value(
        "mailfleet_tracking_record_latency_seconds_bucket", {"kind": "click", "le": "60.0"}
    )
    assert (within_60 or 0) - (within_60_before or 0) == 3
