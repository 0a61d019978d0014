"""Fixtures for the dispatcher: settings, a pool, a broker, and rows inserted with plain SQL."""

import asyncio
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from faststream.asgi import AsgiFastStream
from faststream.rabbit import RabbitBroker, RabbitExchange, RabbitQueue
from mailfleet_common import topology
from mailfleet_common.db import Conn, create_pool
from mailfleet_common.settings import PostgresSettings, RabbitSettings
from mailfleet_dispatcher.assignment import Assigner
from mailfleet_dispatcher.main import create_app
from mailfleet_dispatcher.settings import DispatchSettings, Settings

__all__ = ["Conn"]


@pytest.fixture
def settings(database_dsn: str, rabbit_url: str) -> Settings:
    return Settings(
        postgres=PostgresSettings(dsn=database_dsn),
        rabbit=RabbitSettings(url=rabbit_url),
        dispatcher=DispatchSettings(tick_ms=50, sweep_interval_s=0.2),
    )


@pytest.fixture
async def pool(db: Conn, settings: Settings) -> AsyncIterator[Any]:
    pool = await create_pool(settings.postgres)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def app(db: Conn, settings: Settings) -> AsyncIterator[AsgiFastStream]:
    """The dispatcher app, started and ready, stopped after the test."""
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


@pytest.fixture
async def broker(rabbit_url: str) -> AsyncIterator[RabbitBroker]:
    broker = RabbitBroker(rabbit_url)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.stop()


class RecordingPublisher:
    """Stands in for the bus where a test only cares what would be published."""

    def __init__(self) -> None:
        self.published: list[tuple[UUID, list[int]]] = []

    async def publish_batches(
        self, assignments: Mapping[UUID, Sequence[int]], traces: object = None
    ) -> int:
        self.published.extend((account, list(ids)) for account, ids in assignments.items())
        return len(assignments)

    def ids(self) -> list[int]:
        return [i for _, ids in self.published for i in ids]


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


async def insert_account(
    db: Conn,
    *,
    daily_limit: int = 1000,
    min_gap_ms: int = 0,
    status: str = "active",
    warmup_started_on: Any = None,
    warmup_initial: int = 20,
    warmup_increment: int = 20,
    tags: Sequence[str] = (),
) -> UUID:
    account_id: UUID = await db.fetchval(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit,
                              min_gap_ms, status, warmup_started_on, warmup_initial,
                              warmup_increment, tags)
        VALUES ('test', '127.0.0.1', 2525, 'none', 'news@example.com', $1, $2, $3, $4, $5, $6,
                $7)
        RETURNING id
        """,
        daily_limit,
        min_gap_ms,
        status,
        warmup_started_on,
        warmup_initial,
        warmup_increment,
        sorted(set(tags)),
    )
    return account_id


async def insert_campaign(
    db: Conn,
    *,
    status: str = "running",
    pool: Sequence[UUID] = (),
    tags: Sequence[str] = (),
    start_at: datetime | None = None,
) -> UUID:
    owner = await db.fetchval("SELECT id FROM users LIMIT 1")
    if owner is None:
        owner = await db.fetchval(
            "INSERT INTO users (email, password_hash, role) VALUES ('op@example.com', 'x', 'admin')"
            " RETURNING id"
        )
    campaign_id: UUID = await db.fetchval(
        """
        INSERT INTO campaigns (owner_id, name, subject, text_body, status, account_ids, start_at,
                               pool_tags)
        VALUES ($1, 'test', 'Hello', 'Hi', $2, $3, $4, $5) RETURNING id
        """,
        owner,
        status,
        list(pool),
        start_at,
        sorted(set(tags)),
    )
    return campaign_id


async def insert_messages(
    db: Conn,
    campaign_id: UUID,
    count: int,
    *,
    status: str = "queued",
    next_attempt_at: datetime | None = None,
    account_id: UUID | None = None,
) -> list[int]:
    rows = await db.fetch(
        """
        INSERT INTO messages (campaign_id, email, status, next_attempt_at, account_id)
        SELECT $1, 'r' || g || '-' || gen_random_uuid() || '@example.com', $2, $3, $5
        FROM generate_series(1, $4) AS g
        ORDER BY g
        RETURNING id
        """,
        campaign_id,
        status,
        next_attempt_at,
        count,
        account_id,
    )
    return sorted(r["id"] for r in rows)


async def assigned_per_account(db: Conn) -> dict[UUID, int]:
    """How many messages each account holds (any status but queued), by account."""
    rows = await db.fetch(
        "SELECT account_id, count(*) AS n FROM messages WHERE account_id IS NOT NULL"
        " GROUP BY account_id"
    )
    return {r["account_id"]: r["n"] for r in rows}


def make_assigner(pool: Any, publisher: RecordingPublisher, settings: Settings) -> Assigner:
    return Assigner(pool, publisher, settings.dispatcher)


async def dispatch_concurrently(
    db: Conn, settings: Settings, *, ticks: int = 60, between: Any = None
) -> list[int]:
    """Two dispatchers tick `ticks` times each, with jitter, while a stand-in sender keeps
    marking assigned messages sent; returns every message id they published.

    A small look-ahead forces many rounds. `between`, if given, is awaited between rounds of
    the stand-in sender (to change accounts while the dispatchers run).
    """
    tight = settings.dispatcher.model_copy(update={"lookahead_s": 1.0})
    pools = [await create_pool(settings.postgres) for _ in range(2)]
    publishers = [RecordingPublisher(), RecordingPublisher()]
    assigners = [Assigner(p, pub, tight) for p, pub in zip(pools, publishers, strict=True)]
    done = asyncio.Event()

    async def dispatch(assigner: Assigner) -> None:
        for _ in range(ticks):
            await assigner.tick()
            # Jitter, so that either replica may hold the account locks when the other comes.
            await asyncio.sleep(random.random() / 200)

    async def deliver() -> None:
        while not done.is_set():
            await db.execute("UPDATE messages SET status = 'sent' WHERE status = 'assigned'")
            if between is not None:
                await between()
            await asyncio.sleep(0.002)

    async def dispatch_both() -> None:
        await asyncio.gather(*(dispatch(a) for a in assigners))
        done.set()

    try:
        await asyncio.gather(dispatch_both(), deliver())
    finally:
        for p in pools:
            await p.close()
    return publishers[0].ids() + publishers[1].ids()


async def status_counts(db: Conn) -> dict[str, int]:
    rows = await db.fetch("SELECT status, count(*) AS n FROM messages GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def reserved_today(db: Conn, account_id: UUID) -> int:
    value = await db.fetchval(
        """
        SELECT coalesce(sum(reserved), 0) FROM account_daily_usage
        WHERE account_id = $1 AND day = (now() AT TIME ZONE 'UTC')::date
        """,
        account_id,
    )
    return int(value)


async def bound_queue(broker: RabbitBroker, exchange: RabbitExchange, routing_key: str) -> Any:
    """A fresh queue bound to `exchange`, for a test to read what was published there."""
    await broker.declare_exchange(exchange)
    queue = await broker.declare_queue(RabbitQueue(f"test.{uuid4().hex}", auto_delete=True))
    await queue.bind(exchange.name, routing_key=routing_key)
    return queue


async def next_body(queue: Any, wait_s: float = 5.0) -> bytes:
    """The body of the next message on `queue`, waiting up to `wait_s` for it."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return bytes(message.body)
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"nothing arrived on {queue.name}")
        await asyncio.sleep(0.05)


async def next_dead_letter(queue: Any, wait_s: float = 5.0) -> Any:
    """The next message on the dead-letter `queue`, or None if none comes within `wait_s`."""

    async def get() -> Any:
        return await queue.get(no_ack=True, fail=False)

    return await eventually(get, wait_s)


async def is_dead_lettered(broker: RabbitBroker, routing_key: str, body: bytes) -> bool:
    """Publish `body` as an event; True once it arrives, unchanged, in the dead-letter queue."""
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
    message = await next_dead_letter(dead)
    return message is not None and (message.message_id, bytes(message.body)) == (marker, body)
