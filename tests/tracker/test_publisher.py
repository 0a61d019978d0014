"""The hit buffer and its publisher: batching, confirms, outages, the bound, and shutdown."""

import asyncio
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from mailfleet_common.messages import TrackingHits
from mailfleet_common.tracking import TokenKind, TokenSigner, open_path
from mailfleet_tracker.publisher import HitBuffer, Publisher, encode_hits

from .conftest import (
    Db,
    HitsInbox,
    StartTracker,
    insert_campaign,
    insert_messages,
    sample,
    sign,
)
from .proxy import TcpProxy


class FakeEvents:
    """Stands in for the broker: confirms what it is given, or fails while `down` is set."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.published: list[tuple[str, TrackingHits]] = []

    @property
    def connected(self) -> bool:
        return not self.down

    async def connect(self) -> None:
        if self.down:
            raise ConnectionRefusedError("broker down")

    async def publish(
        self, routing_key: str, body: bytes, headers: dict[str, object] | None = None
    ) -> None:
        await self.connect()
        self.published.append((routing_key, TrackingHits.model_validate_json(body)))

    async def close(self) -> None:
        pass

    def message_ids(self, kind: str) -> list[int]:
        return [h.message_id for key, batch in self.published if key == kind for h in batch.hits]


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def fill(buffer: HitBuffer, kind: str, message_ids: range) -> None:
    for message_id in message_ids:
        assert buffer.add(kind, message_id, time.time(), "192.0.2.1", "agent", None, None)


async def eventually(check: object, wait_s: float = 5.0) -> bool:
    deadline = time.monotonic() + wait_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_encoded_hits_are_valid_tracking_hits() -> None:
    hits = [
        (1, 42, 1_800_000_000.25, "192.0.2.1", "agent", None, None, None),
        (2, 43, 1_800_000_001.0, None, None, "https://example.org/?a=1", "bot", TRACEPARENT),
    ]

    batch = TrackingHits.model_validate_json(encode_hits("clicked", hits, "abc"))

    assert batch.kind == "clicked"
    assert [h.key for h in batch.hits] == ["abc-1", "abc-2"]
    assert batch.hits[0].occurred_at.timestamp() == 1_800_000_000.25
    assert batch.hits[0].occurred_at.utcoffset() is not None
    assert (batch.hits[1].machine, batch.hits[1].machine_reason) == (True, "bot")
    assert (batch.hits[0].machine, batch.hits[0].machine_reason) == (False, None)
    assert [h.traceparent for h in batch.hits] == [None, TRACEPARENT]


def test_a_full_buffer_drops_new_hits_and_counts_them() -> None:
    buffer = HitBuffer(capacity=3)
    dropped = sample("mailfleet_tracker_events_dropped_total")

    results = [buffer.add("opened", i, time.time(), None, None, None, None) for i in range(5)]

    assert results == [True, True, True, False, False]
    assert len(buffer) == 3
    assert [hit[1] for hit in buffer.peek("opened", 10)] == [0, 1, 2]
    assert sample("mailfleet_tracker_events_dropped_total") == dropped + 2


async def test_batches_are_at_most_batch_max_and_in_order_per_kind() -> None:
    buffer, events = HitBuffer(1000), FakeEvents()
    publisher = Publisher(buffer, events, batch_max=4, linger_s=0)
    fill(buffer, "opened", range(1, 11))
    fill(buffer, "clicked", range(100, 103))

    publisher.start()
    try:
        assert await eventually(lambda: len(buffer) == 0)
    finally:
        await publisher.close(timeout_s=1)

    assert events.message_ids("opened") == list(range(1, 11))
    assert events.message_ids("clicked") == [100, 101, 102]
    assert all(len(batch.hits) <= 4 for _, batch in events.published)
    keys = [h.key for _, batch in events.published for h in batch.hits]
    assert len(set(keys)) == 13


async def test_of_several_kinds_the_one_whose_first_hit_came_first_is_published_first() -> None:
    buffer, events = HitBuffer(1000), FakeEvents()
    fill(buffer, "unsubscribed", range(1, 2))
    fill(buffer, "clicked", range(2, 3))
    fill(buffer, "opened", range(3, 4))
    publisher = Publisher(buffer, events, batch_max=100, linger_s=0)

    publisher.start()
    await publisher.close(timeout_s=1)

    assert [kind for kind, _ in events.published] == ["unsubscribed", "clicked", "opened"]


async def test_hits_stay_buffered_while_the_broker_is_down_and_all_arrive_once_it_is_back() -> None:
    buffer, events = HitBuffer(1000), FakeEvents(down=True)
    publisher = Publisher(buffer, events, batch_max=100, linger_s=0)
    failures = sample("mailfleet_tracker_publish_failures_total")
    publisher.start()
    try:
        fill(buffer, "opened", range(1, 51))
        assert await eventually(
            lambda: sample("mailfleet_tracker_publish_failures_total") >= failures + 2
        )
        assert len(buffer) == 50
        fill(buffer, "opened", range(51, 61))

        events.down = False
        assert await eventually(lambda: len(buffer) == 0)
    finally:
        await publisher.close(timeout_s=1)

    assert events.message_ids("opened") == list(range(1, 61))


async def test_shutdown_publishes_what_is_buffered() -> None:
    buffer, events = HitBuffer(1000), FakeEvents()
    # A long linger: only the shutdown makes these go out now.
    publisher = Publisher(buffer, events, batch_max=1000, linger_s=60)
    publisher.start()
    fill(buffer, "unsubscribed", range(1, 4))
    await asyncio.sleep(0.1)  # lingering now

    started = time.monotonic()
    await publisher.close(timeout_s=5)

    assert time.monotonic() - started < 1

    assert events.message_ids("unsubscribed") == [1, 2, 3]
    assert len(buffer) == 0


async def test_shutdown_gives_up_after_its_timeout_when_the_broker_stays_away() -> None:
    buffer, events = HitBuffer(1000), FakeEvents(down=True)
    publisher = Publisher(buffer, events, batch_max=1000, linger_s=0)
    publisher.start()
    fill(buffer, "opened", range(1, 4))

    started = time.monotonic()
    await publisher.close(timeout_s=0.3)

    assert time.monotonic() - started < 2
    assert len(buffer) == 3
    assert events.published == []


def _through(proxy: TcpProxy, rabbit_url: str) -> str:
    parts = urlsplit(rabbit_url)
    credentials = f"{parts.username}:{parts.password}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{proxy.port}"))


@pytest.mark.rabbit
async def test_the_tracker_answers_and_buffers_through_rabbitmq_outages_and_loses_nothing(
    start_tracker: StartTracker, db: Db, rabbit_url: str, signer: TokenSigner, inbox: HitsInbox
) -> None:
    broker = urlsplit(rabbit_url)
    proxy = TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672)  # not started: down
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, [f"r{i}@example.org" for i in range(30)])
    paths = [open_path(sign(signer, TokenKind.OPEN, i)) for i in ids]

    try:
        # RabbitMQ is unreachable at startup: the tracker starts anyway.
        async with start_tracker(rabbit=_through(proxy, rabbit_url)) as tracker:
            for path in paths[:10]:
                assert (await tracker.client.get(path)).status_code == 200
            assert tracker.buffered == 10
            assert (await tracker.client.get("/ready")).status_code == 200
            assert sample("mailfleet_tracker_broker_connected") == 0

            await proxy.start()
            first = await inbox.receive(10, wait_s=15)
            assert sample("mailfleet_tracker_broker_connected") == 1
            # Delivered to the queue is not yet confirmed to the tracker: wait for the confirm,
            # or the cut below would leave these in the buffer too (to be published again).
            assert await eventually(lambda: tracker.buffered == 0)

            # Cut while connected: aio-pika reconnects by itself once it is back.
            await proxy.stop()
            for path in paths[10:20]:
                assert (await tracker.client.get(path)).status_code == 200
            await asyncio.sleep(0.5)
            assert tracker.buffered == 10
            await proxy.start()
            second = await inbox.receive(10, wait_s=15)

            for path in paths[20:]:
                assert (await tracker.client.get(path)).status_code == 200
        third = await inbox.receive(10)
    finally:
        await proxy.stop()

    received = [h.message_id for batch in first + second + third for h in batch.hits]
    assert sorted(set(received)) == ids
    assert await inbox.nothing_more()
