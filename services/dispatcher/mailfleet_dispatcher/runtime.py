"""The running dispatcher: its pool, bus and background loops, started and stopped as one."""

import asyncio
import logging

from faststream.rabbit import RabbitBroker
from mailfleet_common.db import Pool, create_pool

from mailfleet_dispatcher import fleet
from mailfleet_dispatcher.assignment import Assigner
from mailfleet_dispatcher.bus import Bus
from mailfleet_dispatcher.counters import CounterFold
from mailfleet_dispatcher.settings import Settings
from mailfleet_dispatcher.stalls import StallWatch
from mailfleet_dispatcher.sweeps import Sweeper

log = logging.getLogger(__name__)


class Runtime:
    """Owns what lives between startup and shutdown; the app's hooks call into it."""

    def __init__(self, settings: Settings, broker: RabbitBroker) -> None:
        self.settings = settings
        self.broker = broker
        self.bus = Bus(broker, settings.dispatcher.batch_size)
        self._pool: Pool | None = None
        self._assigner: Assigner | None = None
        self._transactional: Assigner | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the dispatcher is not started")
        return self._pool

    async def start(self) -> None:
        """Open the pool and declare the topology, before any subscriber consumes."""
        self._pool = await create_pool(self.settings.postgres)
        await self.broker.connect()
        await self.bus.declare_topology()

    async def start_loops(self) -> None:
        """Start the assignment loop and the sweeps once the broker is serving."""
        settings = self.settings.dispatcher
        self._stopping.clear()
        self._assigner = Assigner(self.pool, self.bus, settings)
        self._transactional = Assigner(self.pool, self.bus, settings, urgent=self.bus)
        sweeper = Sweeper(self.pool, self.bus, settings, self.settings.replicas.timeout_s)
        self._tasks = [
            asyncio.create_task(self._assigner.run(self._stopping), name="assignment"),
            asyncio.create_task(
                self._transactional.run(self._stopping), name="transactional-assignment"
            ),
            asyncio.create_task(sweeper.run(self._stopping), name="sweeps"),
            asyncio.create_task(
                StallWatch(self.pool, self.bus, settings, self.settings.replicas.timeout_s).run(
                    self._stopping
                ),
                name="stalls",
            ),
            asyncio.create_task(
                fleet.FleetGauges(
                    self.settings.postgres.dsn,
                    fleet.COLLECTOR,
                    settings.fleet_gauges_s,
                    self.settings.bouncer,
                ).run(self._stopping),
                name="fleet-gauges",
            ),
            asyncio.create_task(
                CounterFold(self.pool, settings).run(self._stopping), name="counter-fold"
            ),
        ]
        log.info("dispatcher started", extra={"tick_ms": settings.tick_ms})

    def wake_assigner(self, transactional: bool = False) -> None:
        assigner = self._transactional if transactional else self._assigner
        if assigner is not None:
            assigner.wake()

    async def stop_loops(self) -> None:
        """Stop the loops between ticks: a transaction and its publishes always finish."""
        self._stopping.set()
        for assigner in (self._assigner, self._transactional):
            if assigner is not None:
                assigner.wake()
        await asyncio.gather(*self._tasks)
        self._tasks = []

    async def close(self) -> None:
        """Close the pool, after the subscribers have finished their messages."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def database_ready(self) -> bool:
        if self._pool is None:
            return False
        try:
            async with asyncio.timeout(1):
                return bool(await self._pool.fetchval("SELECT true"))
        except Exception:
            return False

    async def broker_ready(self) -> bool:
        # FastStream reports ASGI startup complete before the broker starts consuming; the
        # loops start only after it has, so they mark the moment the service is really up.
        return bool(self._tasks) and await self.broker.ping(timeout=1)
