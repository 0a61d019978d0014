"""The running tracker: its pool, hit buffer, publisher and id refresher, started as one."""

import logging

from mailfleet_common.db import Pool, create_pool

from mailfleet_tracker import queries
from mailfleet_tracker.issued import IssuedIds
from mailfleet_tracker.publisher import EventSink, HitBuffer, Publisher, RabbitEvents
from mailfleet_tracker.settings import Settings

log = logging.getLogger(__name__)

# The id refresher reads every second; three missed reads in a row would be a stuck one.
_READ_FRESH_S = 3.0


class Runtime:
    """Owns what lives between startup and shutdown; the app's lifespan calls into it.

    The buffer exists from the start, so requests can record hits as soon as they arrive.
    """

    def __init__(self, settings: Settings, events: EventSink | None = None) -> None:
        self.settings = settings
        tracker = settings.tracker
        self.buffer = HitBuffer(tracker.buffer_max)
        self.events = events or RabbitEvents(settings.rabbit.url.get_secret_value())
        self.publisher = Publisher(
            self.buffer, self.events, tracker.batch_max, tracker.linger_ms / 1000
        )
        self.ids = IssuedIds(self._highest_message_id)
        self._pool: Pool | None = None

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the tracker is not started")
        return self._pool

    async def start(self) -> None:
        """Open the pool and read the highest message id, then start the background tasks.

        A database that cannot be reached fails startup. A broker that cannot be reached
        does not: hits are buffered until it can.
        """
        self._pool = await create_pool(self.settings.postgres)
        if await self.ids.refresh() is None:
            await self._pool.close()
            self._pool = None
            raise RuntimeError("cannot read the highest message id from PostgreSQL")
        self.ids.start()
        self.publisher.start()
        log.info(
            "tracker started",
            extra={"highest_message_id": self.ids.highest, "instance": self.publisher.instance_id},
        )

    async def stop(self) -> None:
        """Publish what is buffered (up to shutdown_flush_s), then close everything."""
        await self.ids.stop()
        await self.publisher.close(self.settings.tracker.shutdown_flush_s)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        log.info("tracker stopped")

    async def database_ready(self) -> bool:
        """Readiness: the database answered the id refresher's last read, a second ago or so.

        No query of its own: the refresher reads every second anyway, and a failed read makes
        the replica unready at once. The broker is not part of it: its outages are what the
        buffer is for, and trackers taken out of the load balancer would break every link in
        every message sent. mailfleet_tracker_broker_connected and the buffered gauge show
        them instead.
        """
        return self._pool is not None and self.ids.read_within(_READ_FRESH_S)

    async def _highest_message_id(self) -> int:
        async with self.pool.acquire() as conn:
            return await queries.highest_message_id(conn)
