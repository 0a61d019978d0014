"""Fixtures for the tracker: settings, the app run in-process, tokens, rows, and received hits."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aio_pika
import httpx
import pytest
from asgi_lifespan import LifespanManager
from mailfleet_common import topology
from mailfleet_common.db import Conn as Db
from mailfleet_common.messages import TrackingHits
from mailfleet_common.settings import PostgresSettings, RabbitSettings, TrackingSettings
from mailfleet_common.tracking import TokenKind, TokenSigner, parse_keys
from mailfleet_tracker.app import TrackerApp
from mailfleet_tracker.main import create_app
from mailfleet_tracker.settings import Settings, TrackerSettings
from prometheus_client import REGISTRY

__all__ = ["Db"]

# A desktop browser: its hits are a reader's, not a machine's.
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CLIENT_IP = "203.0.113.7"


def tracker_settings(
    database_dsn: str, rabbit_url: str, tracking_keys: str, **tracker: Any
) -> Settings:
    """Settings for a test tracker: short lingers and timeouts, and `tracker` on top."""
    options: dict[str, Any] = {
        "linger_ms": 10,
        "shutdown_flush_s": 3,
        "unsubscribe_settle_s": 5,
        **tracker,
    }
    return Settings(
        postgres=PostgresSettings(dsn=database_dsn, pool_min=1, pool_max=4),
        rabbit=RabbitSettings(url=rabbit_url),
        tracking=TrackingSettings(keys=tracking_keys),
        tracker=TrackerSettings(**options),
    )


@pytest.fixture
def settings(database_dsn: str, rabbit_url: str, tracking_keys: str) -> Settings:
    return tracker_settings(database_dsn, rabbit_url, tracking_keys)


@pytest.fixture
def signer(tracking_keys: str) -> TokenSigner:
    return TokenSigner(parse_keys(tracking_keys))


@dataclass
class Tracker:
    """The app under test and an HTTP client talking to it in-process."""

    app: TrackerApp
    client: httpx.AsyncClient

    @property
    def buffered(self) -> int:
        return len(self.app.runtime.buffer)


@asynccontextmanager
async def running_tracker(settings: Settings) -> AsyncIterator[Tracker]:
    """The tracker started through its lifespan, as uvicorn would, and stopped after."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=15, shutdown_timeout=15):  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 50000))  # type: ignore[arg-type]
        async with httpx.AsyncClient(
            transport=transport, base_url="http://tracker.test", headers={"user-agent": BROWSER}
        ) as client:
            yield Tracker(app, client)


@pytest.fixture
async def tracker(db: Db, settings: Settings) -> AsyncIterator[Tracker]:
    async with running_tracker(settings) as running:
        yield running


StartTracker = Callable[..., AbstractAsyncContextManager[Tracker]]


@pytest.fixture
def start_tracker(db: Db, database_dsn: str, rabbit_url: str, tracking_keys: str) -> StartTracker:
    """`async with start_tracker(dsn=..., rabbit=..., **tracker_settings) as tracker:`."""

    def start(
        *, dsn: str | None = None, rabbit: str | None = None, **tracker: Any
    ) -> AbstractAsyncContextManager[Tracker]:
        settings = tracker_settings(
            dsn or database_dsn, rabbit or rabbit_url, tracking_keys, **tracker
        )
        return running_tracker(settings)

    return start


def an_hour_ago() -> int:
    """An issued_at far enough back that a hit is not taken for a scanner's."""
    return int(time.time()) - 3600


def sign(signer: TokenSigner, kind: TokenKind, message_id: int, url: str | None = None) -> str:
    return signer.sign(kind, message_id, an_hour_ago(), url)


async def insert_campaign(db: Db, *, scope: str = "global") -> UUID:
    owner = await db.fetchval(
        "INSERT INTO users (email, password_hash, role) VALUES ($1, 'x', 'admin') RETURNING id",
        f"owner-{uuid.uuid4().hex}@example.com",
    )
    campaign: UUID = await db.fetchval(
        """
        INSERT INTO campaigns (owner_id, name, subject, text_body, status, unsubscribe_scope)
        VALUES ($1, 'test', 'Hello', 'Hi', 'running', $2) RETURNING id
        """,
        owner,
        scope,
    )
    return campaign


async def insert_messages(
    db: Db, campaign: UUID, emails: Sequence[str], status: str = "sent"
) -> list[int]:
    """One message per address, in order; returns their ids."""
    rows = await db.fetch(
        """
        INSERT INTO messages (campaign_id, email, status)
        SELECT $1, email, $2 FROM unnest($3::text[]) WITH ORDINALITY AS t (email, n)
        ORDER BY n
        RETURNING id
        """,
        campaign,
        status,
        list(emails),
    )
    return sorted(row["id"] for row in rows)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class HitsInbox:
    """A queue of its own bound to the events exchange for the tracking kinds."""

    def __init__(self, queue: aio_pika.abc.AbstractQueue) -> None:
        self._queue = queue

    async def receive(self, count: int, wait_s: float = 10.0) -> list[TrackingHits]:
        """Batches until they hold `count` hits; TimeoutError if they do not come in time."""
        batches: list[TrackingHits] = []
        async with asyncio.timeout(wait_s):
            while sum(len(b.hits) for b in batches) < count:
                message = await self._queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.02)
                    continue
                assert message.content_type == "application/json"
                assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
                batch = TrackingHits.model_validate_json(message.body)
                assert message.routing_key == batch.kind
                batches.append(batch)
        return batches

    async def nothing_more(self, wait_s: float = 0.5) -> bool:
        await asyncio.sleep(wait_s)
        return await self._queue.get(no_ack=True, fail=False) is None


@pytest.fixture
async def inbox(rabbit_url: str) -> AsyncIterator[HitsInbox]:
    connection = await aio_pika.connect(rabbit_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            topology.EVENTS.name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(f"test.tracker.{uuid.uuid4().hex}", exclusive=True)
        for key in topology.TRACKING_KEYS:
            await queue.bind(exchange, routing_key=key)
        yield HitsInbox(queue)
    finally:
        await connection.close()
