"""Periodic sweeps: give back stranded assignments, flag orphaned sends, finish campaigns.

Every sweep locks with SKIP LOCKED and re-checks status in its UPDATE, so several dispatcher
replicas can sweep at once: each row changes once, and each unit is released once.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from mailfleet_common.db import DATABASE_AWAY, Pool
from mailfleet_common.publishing import BROKER_AWAY

from mailfleet_dispatcher import metrics, queries
from mailfleet_dispatcher.bus import Bus
from mailfleet_dispatcher.settings import DispatchSettings

log = logging.getLogger(__name__)


async def repeat(
    step: Callable[[], Awaitable[object]], every_s: float, stopping: asyncio.Event, what: str
) -> None:
    """Run `step` every `every_s` until `stopping` is set; a failed step is logged and counted.

    The database or the broker being away is expected now and then (a restart, a failover):
    a warning, not an error.
    """
    while not stopping.is_set():
        try:
            await step()
        except (*DATABASE_AWAY, *BROKER_AWAY) as exc:
            metrics.SWEEP_ERRORS.inc()
            log.warning(f"{what} failed: server unavailable", extra={"error": repr(exc)})
        except Exception:
            metrics.SWEEP_ERRORS.inc()
            log.exception(f"{what} failed")
        try:
            async with asyncio.timeout(every_s):
                await stopping.wait()
        except TimeoutError:
            pass


@dataclass(frozen=True)
class SweepResult:
    requeued: int
    released_cancelled: int
    uncertain: list[int]
    completed: int


class Sweeper:
    """Runs the sweeps every `sweep_interval_s`, and the partition upkeep once a UTC day."""

    def __init__(
        self, pool: Pool, bus: Bus, settings: DispatchSettings, replica_timeout_s: float
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._settings = settings
        self._replica_timeout_s = replica_timeout_s
        self._partitions_checked: date | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Sweep until `stopping` is set; a sweep in progress always finishes."""
        await repeat(self._sweep_once, self._settings.sweep_interval_s, stopping, "sweep")

    async def _sweep_once(self) -> None:
        await self.ensure_partitions()
        await self.sweep()

    async def ensure_partitions(self) -> None:
        """Create this and next month's events partitions, at most once per UTC day."""
        today = datetime.now(UTC).date()
        if self._partitions_checked == today:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await queries.ensure_events_partitions(conn)
        self._partitions_checked = today

    async def sweep(self) -> SweepResult:
        """Run every sweep once, each in its own short transaction."""
        s = self._settings
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                requeued = await queries.requeue_stranded(conn, s.stranded_after_s)
            async with conn.transaction():
                released = await queries.release_cancelled(conn)
            async with conn.transaction():
                uncertain = await queries.mark_orphans_uncertain(
                    conn, self._replica_timeout_s, s.sending_timeout_s
                )
            async with conn.transaction():
                finished = await queries.lock_finished_campaigns(conn)
                completed = await queries.complete_campaigns(conn, finished) if finished else []
        if uncertain:
            ids = [m.id for m in uncertain]
            replicas = sorted({str(m.sender_replica) for m in uncertain})
            log.warning(
                "messages left in sending by a dead sender are now uncertain",
                extra={"message_ids": ids, "replicas": replicas},
            )
            await self._bus.publish_uncertain(ids)
        if completed:
            log.info("campaigns completed", extra={"campaign_ids": [str(c) for c in completed]})
        metrics.SWEPT.labels("requeued").inc(requeued)
        metrics.SWEPT.labels("released-cancelled").inc(released)
        metrics.SWEPT.labels("uncertain").inc(len(uncertain))
        metrics.SWEPT.labels("completed").inc(len(completed))
        return SweepResult(requeued, released, [m.id for m in uncertain], len(completed))
