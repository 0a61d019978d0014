"""The counter fold: moves the deltas the triggers append into the counters' buckets.

Every replica runs it; the fold's advisory lock lets one at a time do the work, and a delta
is deleted in the transaction that adds it to its buckets, so it is folded once whoever runs.
"""

import asyncio
import logging

from mailfleet_common.db import Pool

from mailfleet_dispatcher import queries
from mailfleet_dispatcher.settings import DispatchSettings
from mailfleet_dispatcher.sweeps import repeat

log = logging.getLogger(__name__)

# A backlog (the dispatchers were down) is folded in several transactions per round, and
# at most this many, so one round stays short.
MAX_TRANSACTIONS = 50


class CounterFold:
    """Folds the counter deltas every `counter_fold_s`."""

    def __init__(self, pool: Pool, settings: DispatchSettings) -> None:
        self._pool = pool
        self._settings = settings

    async def run(self, stopping: asyncio.Event) -> None:
        """Fold until `stopping` is set; a fold in progress always finishes."""
        await repeat(self.fold, self._settings.counter_fold_s, stopping, "counter fold")

    async def fold(self) -> int:
        """Fold what is there now, in transactions of at most `counter_fold_rows`."""
        total = 0
        rows = self._settings.counter_fold_rows
        async with self._pool.acquire() as conn:
            for _ in range(MAX_TRANSACTIONS):
                async with conn.transaction():
                    folded = await queries.fold_counters(conn, rows)
                total += folded
                if folded < rows:
                    break
        if total:
            log.debug("counters folded", extra={"deltas": total})
        return total
