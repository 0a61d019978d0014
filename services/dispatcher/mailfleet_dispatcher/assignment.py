"""The assignment loop: reserve account capacity for queued messages and command their sending."""

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import asyncpg
from mailfleet_common.db import Pool

from mailfleet_dispatcher import metrics, queries
from mailfleet_dispatcher.settings import DispatchSettings

log = logging.getLogger(__name__)


class BatchPublisher(Protocol):
    async def publish_batches(self, assignments: Mapping[UUID, Sequence[int]]) -> int:
        """Publish SendBatch commands for these assignments; returns the batches published."""
        ...


@dataclass(frozen=True)
class TickResult:
    assigned: int
    batches: int
    accounts: int


def lookahead(min_gap_ms: int, settings: DispatchSettings) -> int:
    """How many messages an account may have in flight: `lookahead_s` of its pace."""
    if min_gap_ms <= 0:
        return settings.max_inflight
    ahead = max(1, math.ceil(settings.lookahead_s * 1000 / min_gap_ms))
    return min(ahead, settings.max_inflight)


def distribute(
    candidates: Sequence[queries.Candidate],
    wants: Mapping[UUID, int],
    pools: Mapping[UUID, tuple[UUID, ...]],
) -> dict[UUID, list[int]]:
    """Give each candidate, oldest first, to the eligible account that got fewest so far.

    `wants` is ordered: on a tie the earlier account wins, so the caller rotates it between
    ticks. A campaign with an empty pool admits every account. When messages are scarce this
    spreads them evenly instead of filling the first account.
    """
    rank = {account: i for i, account in enumerate(wants)}
    remaining = dict(wants)
    given = dict.fromkeys(wants, 0)
    left = sum(remaining.values())
    # One heap of (given, rank, account) per distinct pool (the empty pool: every account),
    # least given first. Entries go stale as other pools give to shared accounts, and are
    # fixed lazily when they reach the top: O(log n) per message instead of a scan of the pool.
    heaps: dict[tuple[UUID, ...], list[tuple[int, int, UUID]]] = {}
    chosen: dict[UUID, list[int]] = {}
    for candidate in candidates:
        if left == 0:
            break
        pool = pools.get(candidate.campaign_id, ())
        heap = heaps.get(pool)
        if heap is None:
            members = pool or tuple(wants)
            heap = [(0, rank[a], a) for a in members if remaining.get(a, 0) > 0]
            heapq.heapify(heap)
            heaps[pool] = heap
        account: UUID | None = None
        while heap:
            count, r, top = heap[0]
            if remaining[top] == 0:
                heapq.heappop(heap)
            elif count != given[top]:
                heapq.heapreplace(heap, (given[top], r, top))
            else:
                account = top
                break
        if account is None:
            continue
        given[account] += 1
        remaining[account] -= 1
        left -= 1
        heapq.heapreplace(heap, (given[account], rank[account], account))
        chosen.setdefault(account, []).append(candidate.id)
    return chosen


class Assigner:
    """Runs assignment ticks on a timer and on demand, until told to stop."""

    def __init__(self, pool: Pool, publisher: BatchPublisher, settings: DispatchSettings) -> None:
        self._pool = pool
        self._publisher = publisher
        self._settings = settings
        self._wakeup = asyncio.Event()
        self._rotation = 0

    def wake(self) -> None:
        """Run the next tick now rather than when the timer says."""
        self._wakeup.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Tick until `stopping` is set; a tick in progress always finishes."""
        interval = self._settings.tick_ms / 1000
        while not stopping.is_set():
            try:
                result = await self.tick()
            except Exception:
                metrics.TICK_ERRORS.inc()
                log.exception("assignment tick failed")
            else:
                if result.assigned >= self._settings.max_per_tick:
                    continue  # more is waiting: hand it out now, not a tick later
            try:
                async with asyncio.timeout(interval):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def tick(self) -> TickResult:
        """Assign what the active accounts can take now, commit, then publish the commands."""
        started = time.perf_counter()
        for attempt in range(3):
            try:
                assignments, accounts = await self._assign()
                break
            except asyncpg.DeadlockDetectedError:
                # Other writers of usage rows lock them in account order too, so this is
                # rare; the transaction rolled back whole, so trying again is safe.
                if attempt == 2:
                    raise
        batches = await self._publisher.publish_batches(assignments) if assignments else 0
        assigned = sum(len(ids) for ids in assignments.values())
        metrics.MESSAGES_ASSIGNED.inc(assigned)
        metrics.TICK_SECONDS.observe(time.perf_counter() - started)
        return TickResult(assigned=assigned, batches=batches, accounts=accounts)

    async def _assign(self) -> tuple[dict[UUID, list[int]], int]:
        async with self._pool.acquire() as conn, conn.transaction():
            accounts = await queries.lock_active_accounts(conn)
            if not accounts:
                return {}, 0
            today = accounts[0].today
            loads = await queries.account_loads(conn, [a.id for a in accounts], today)
            wants: dict[UUID, int] = {}
            for account in accounts:
                load = loads[account.id]
                room = lookahead(account.min_gap_ms, self._settings) - load.inflight
                left = account.effective_limit - load.reserved
                if min(room, left) > 0:
                    wants[account.id] = min(room, left)
            if not wants:
                return {}, len(accounts)
            if sum(wants.values()) > self._settings.max_per_tick:
                share = max(1, self._settings.max_per_tick // len(wants))
                wants = {a: min(n, share) for a, n in wants.items()}
            campaigns = await queries.runnable_campaigns(conn)
            pools = {c.id: c.pool for c in campaigns}
            demands = [
                sum(n for a, n in wants.items() if not c.pool or a in c.pool) for c in campaigns
            ]
            if not any(demands):
                return {}, len(accounts)
            candidates = await queries.lock_candidates(conn, [c.id for c in campaigns], demands)
            if not candidates:
                return {}, len(accounts)
            self._rotation = (self._rotation + 1) % len(wants)
            order = list(wants)
            order = order[self._rotation :] + order[: self._rotation]
            chosen = distribute(candidates, {a: wants[a] for a in order}, pools)
            ids = [i for ids in chosen.values() for i in ids]
            owners = [a for a, ids in chosen.items() for _ in ids]
            await queries.assign_and_reserve(conn, ids, owners, today)
        return chosen, len(accounts)
