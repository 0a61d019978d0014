"""The assignment loop: reserve account capacity for queued messages and command their sending."""

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from typing import Protocol
from uuid import UUID, uuid4

import asyncpg
from mailfleet_common import tracing
from mailfleet_common.db import Pool

from mailfleet_dispatcher import metrics, queries
from mailfleet_dispatcher.settings import DispatchSettings

log = logging.getLogger(__name__)

# An urgent notice is a hint a sender replica may miss (a hand-over in progress, a
# reconnection): the transactional lane sends it again for the messages still not claimed
# this long after, a few times, before leaving them to their commands.
_RENOTICE_AFTER_S = 1.0
_RENOTICES = 3
_NOTICED_MAX = 10_000


@dataclass(frozen=True)
class Traces:
    """The trace context of a tick's traced messages, and when the tick started (ns)."""

    parents: Mapping[int, str]
    started_ns: int


class BatchPublisher(Protocol):
    async def publish_batches(
        self, assignments: Mapping[UUID, Sequence[int]], traces: Traces | None = None
    ) -> int:
        """Publish SendBatch commands for these assignments; returns the batches published."""
        ...


class UrgentPublisher(Protocol):
    async def publish_urgent(self, assignments: Mapping[UUID, Sequence[int]]) -> None:
        """Tell the sender replicas busy with these accounts to send these messages next."""
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


def seconds_left_today() -> float:
    """Seconds until the next UTC midnight, when every account's day starts afresh."""
    now = datetime.now(UTC)
    return (datetime.combine(now.date() + timedelta(days=1), dt_time(), UTC) - now).total_seconds()


def capacity(account: queries.AccountRoom, seconds_left_today: float) -> int:
    """What the account can still send today: its limit left, and what its pace allows."""
    left = account.effective_limit - account.reserved
    if account.min_gap_ms > 0:
        left = min(left, max(1, int(seconds_left_today * 1000 / account.min_gap_ms)))
    return max(left, 0)


def pool_members(
    campaigns: Sequence[queries.Campaign], accounts: Sequence[queries.AccountRoom]
) -> dict[UUID, frozenset[UUID] | None]:
    """Each campaign's members among `accounts`; None for a campaign open to every account.

    Campaigns with the same pool share one set, so distribute() keeps one heap for them.
    """
    by_tag: dict[str, set[UUID]] = {}
    for account in accounts:
        for tag in account.tags:
            by_tag.setdefault(tag, set()).add(account.id)
    ids = {account.id for account in accounts}
    resolved: dict[tuple[frozenset[UUID], frozenset[str]], frozenset[UUID]] = {}
    members: dict[UUID, frozenset[UUID] | None] = {}
    for campaign in campaigns:
        if campaign.open:
            members[campaign.id] = None
            continue
        key = (campaign.account_ids, campaign.tags)
        if key not in resolved:
            tagged = (by_tag.get(tag, set()) for tag in campaign.tags)
            resolved[key] = frozenset(campaign.account_ids & ids).union(*tagged)
        members[campaign.id] = resolved[key]
    return members


def distribute(
    candidates: Sequence[queries.Candidate],
    wants: Mapping[UUID, int],
    pools: Mapping[UUID, frozenset[UUID] | None],
    weights: Mapping[UUID, int] | None = None,
    limit: int | None = None,
) -> dict[UUID, list[int]]:
    """Give each candidate, oldest first, to the eligible account furthest below its share.

    Shares follow `weights` (what each account can still send today; equal without them):
    the next message goes to the account with the least (given + 1) / weight, so an account
    with three times the capacity left gets about three times the messages, and the accounts
    of a pool run out of their day together instead of the smallest ones first. `wants` caps
    what each account takes (its pace and limit) and is ordered: on a tie the earlier account
    wins, so the caller rotates it between ticks. `pools` maps a campaign to the accounts it
    may use; None (or no entry) admits every account. At most `limit` messages are given.
    """
    rank = {account: i for i, account in enumerate(wants)}
    remaining = dict(wants)
    given = dict.fromkeys(wants, 0)
    weight = weights or {}
    left = sum(remaining.values()) if limit is None else min(limit, sum(remaining.values()))

    def share(account: UUID) -> float:
        return (given[account] + 1) / max(weight.get(account, 1), 1)

    # One heap of (share, rank, account) per distinct pool, smallest share first. Entries go
    # stale as other pools give to shared accounts, and are fixed lazily when they reach the
    # top: O(log n) per message instead of a scan of the pool.
    heaps: dict[frozenset[UUID] | None, list[tuple[float, int, UUID]]] = {}
    chosen: dict[UUID, list[int]] = {}
    for candidate in candidates:
        if left == 0:
            break
        pool = pools.get(candidate.campaign_id)
        heap = heaps.get(pool)
        if heap is None:
            members = wants if pool is None else pool
            heap = [(share(a), rank[a], a) for a in members if remaining.get(a, 0) > 0]
            heapq.heapify(heap)
            heaps[pool] = heap
        account: UUID | None = None
        while heap:
            key, r, top = heap[0]
            if remaining[top] == 0:
                heapq.heappop(heap)
            elif key != share(top):
                heapq.heapreplace(heap, (share(top), r, top))
            else:
                account = top
                break
        if account is None:
            continue
        given[account] += 1
        remaining[account] -= 1
        left -= 1
        heapq.heapreplace(heap, (share(account), rank[account], account))
        chosen.setdefault(account, []).append(candidate.id)
    return chosen


class Assigner:
    """Runs assignment ticks on a timer and on demand, until told to stop.

    One per lane. The campaign lane assigns campaigns' messages within each account's
    look-ahead. The transactional lane (`urgent` set) runs beside it and assigns the
    transactional streams' messages the moment they are enqueued: it may fill an account
    `priority_headroom` past its look-ahead (limits, warm-up and suppressions hold as for
    campaigns, and the sender keeps the account's pace), waits for the accounts the campaign
    lane holds instead of skipping them, and has the replica busy with each account send them
    before the campaign commands it holds.
    """

    def __init__(
        self,
        pool: Pool,
        publisher: BatchPublisher,
        settings: DispatchSettings,
        urgent: UrgentPublisher | None = None,
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._settings = settings
        self._urgent = urgent
        self._kind: queries.CampaignKind = "campaign" if urgent is None else "transactional"
        self._headroom = 0 if urgent is None else settings.priority_headroom
        self._wakeup = asyncio.Event()
        self._rotation = 0
        # Transactional messages noticed: id -> (account, when to check again, notices sent).
        self._noticed: dict[int, tuple[UUID, float, int]] = {}

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
        started_ns = time.time_ns()
        for attempt in range(3):
            try:
                assignments, accounts = await self._assign()
                break
            except asyncpg.DeadlockDetectedError:
                # Other writers of usage rows lock them in account order too, so this is
                # rare; the transaction rolled back whole, so trying again is safe.
                if attempt == 2:
                    raise
        if self._urgent is not None and assignments:
            # First: the replica busy with the account sends these next, and the commands,
            # behind the account's campaign commands, then find them claimed.
            await self._notice(self._urgent, assignments)
        traces = None
        if assignments and tracing.enabled():
            traces = await self._traces(assignments, started_ns)
        batches = await self._publisher.publish_batches(assignments, traces) if assignments else 0
        if self._urgent is not None and self._noticed:
            await self._notice_again(self._urgent)
        assigned = sum(len(ids) for ids in assignments.values())
        metrics.MESSAGES_ASSIGNED.inc(assigned)
        metrics.TICK_SECONDS.observe(time.perf_counter() - started)
        return TickResult(assigned=assigned, batches=batches, accounts=accounts)

    async def _notice(
        self,
        urgent: UrgentPublisher,
        assignments: Mapping[UUID, Sequence[int]],
        times: Mapping[int, int] | None = None,
    ) -> None:
        """Notice the messages to the senders, to be checked again `_RENOTICE_AFTER_S` on.

        `times`: how many notices each message has had before (none if missing).
        """
        due = time.monotonic() + _RENOTICE_AFTER_S
        for account_id, ids in assignments.items():
            for message_id in ids:
                sent = 1 + (times or {}).get(message_id, 0)
                self._noticed[message_id] = (account_id, due, sent)
        while len(self._noticed) > _NOTICED_MAX:
            del self._noticed[next(iter(self._noticed))]
        try:
            await urgent.publish_urgent(assignments)
        except Exception as exc:
            log.warning("urgent notice not published", extra={"error": repr(exc)})

    async def _notice_again(self, urgent: UrgentPublisher) -> None:
        """Notice again the messages noticed a while ago and still not claimed."""
        now = time.monotonic()
        due = [i for i, (_, at, _) in self._noticed.items() if at <= now]
        if not due:
            return
        try:
            async with self._pool.acquire() as conn:
                waiting = dict(await queries.still_assigned(conn, due))
        except Exception as exc:
            log.warning("noticed messages not checked", extra={"error": repr(exc)})
            return  # checked again at the next tick
        again: dict[UUID, list[int]] = {}
        times: dict[int, int] = {}
        for message_id in due:
            account_id, _, sent = self._noticed.pop(message_id)
            if waiting.get(message_id) == account_id and sent < _RENOTICES:
                again.setdefault(account_id, []).append(message_id)
                times[message_id] = sent
        if again:
            metrics.URGENT_RENOTICED.inc(len(times))
            await self._notice(urgent, again, times)

    async def _traces(
        self, assignments: Mapping[UUID, Sequence[int]], started_ns: int
    ) -> Traces | None:
        """The stored trace context of the assigned messages enqueued while tracing was on.

        None if it cannot be read: the commands go out untraced rather than not at all.
        """
        ids = [i for ids in assignments.values() for i in ids]
        try:
            async with self._pool.acquire() as conn:
                return Traces(await queries.traceparents(conn, ids), started_ns)
        except Exception as exc:
            log.warning("trace context not read; commands go untraced", extra={"error": repr(exc)})
            return None

    def _cap(self, account: queries.AccountRoom) -> int:
        """What the account may take now: its pace's look-ahead and its limit left today."""
        room = lookahead(account.min_gap_ms, self._settings) + self._headroom - account.inflight
        return max(min(room, account.effective_limit - account.reserved), 0)

    def _wants(
        self, accounts: Sequence[queries.AccountRoom], seconds_left: float
    ) -> tuple[dict[UUID, int], dict[UUID, int]]:
        """Each account's cap, rotated so ties go to another account each tick, and weight."""
        caps = {a.id: cap for a in accounts if (cap := self._cap(a)) > 0}
        weights = {a.id: capacity(a, seconds_left) for a in accounts if a.id in caps}
        if caps:
            self._rotation = (self._rotation + 1) % len(caps)
        order = list(caps)
        order = order[self._rotation :] + order[: self._rotation]
        return {a: caps[a] for a in order}, weights

    async def _assign(self) -> tuple[dict[UUID, list[int]], int]:
        async with self._pool.acquire() as conn, conn.transaction():
            # Campaigns first: with nothing to hand out, the accounts are not even read.
            campaigns = await queries.campaigns_with_work(conn, self._kind)
            if not campaigns:
                return {}, 0
            today = await queries.utc_today(conn)
            seconds_left = seconds_left_today()
            limit = self._settings.max_per_tick
            pace = (self._settings.lookahead_s, self._settings.max_inflight, self._headroom)
            accounts = await queries.accounts_with_room(
                conn, today, campaigns, pace, seconds_left, limit, uuid4()
            )
            wants, weights = self._wants(accounts, seconds_left)
            if not wants:
                return {}, len(accounts)
            pools = pool_members(campaigns, [a for a in accounts if a.id in wants])
            total = sum(wants.values())
            demands = [
                min(limit, total if pool is None else sum(wants[a] for a in pool))
                for pool in (pools[c.id] for c in campaigns)
            ]
            if not any(demands):
                return {}, len(accounts)
            candidates = await queries.lock_candidates(conn, [c.id for c in campaigns], demands)
            if not candidates:
                return {}, len(accounts)
            planned = distribute(candidates, wants, pools, weights, limit)
            chosen = await self._confirm(conn, planned, candidates, campaigns, today, weights)
            ids = [i for ids in chosen.values() for i in ids]
            owners = [a for a, ids in chosen.items() for _ in ids]
            if ids:
                await queries.assign_and_reserve(conn, ids, owners, today)
        return chosen, len(accounts)

    async def _confirm(
        self,
        conn: queries.Conn,
        planned: Mapping[UUID, Sequence[int]],
        candidates: Sequence[queries.Candidate],
        campaigns: Sequence[queries.Campaign],
        today: date,
        weights: Mapping[UUID, int],
    ) -> dict[UUID, list[int]]:
        """Lock the planned accounts and keep what their loads, read under the lock, allow.

        The plan was made from an unlocked read. Only the accounts it uses are locked (SKIP
        LOCKED: one another dispatcher holds is left to it), and their loads are read again:
        what another dispatcher committed meanwhile counts, so limits and pacing stay exact.
        Messages an account can no longer take, or whose pool it has left, go to the other
        locked accounts with room; the rest stay queued for the next tick.
        """
        wait = self._urgent is not None
        locked = {a.id: a for a in await queries.lock_accounts(conn, sorted(planned), today, wait)}
        by_campaign = {c.id: c for c in campaigns}
        campaign_of = {c.id: c.campaign_id for c in candidates}
        chosen: dict[UUID, list[int]] = {}
        spill: list[int] = []
        spare: dict[UUID, int] = {}
        for account_id, ids in planned.items():
            account = locked.get(account_id)
            if account is None:
                spill.extend(ids)
                continue
            cap = self._cap(account)
            fits = [i for i in ids if by_campaign[campaign_of[i]].admits(account.id, account.tags)]
            chosen[account_id] = fits[:cap]
            kept = set(chosen[account_id])
            spill.extend(i for i in ids if i not in kept)
            if cap > len(kept):
                spare[account_id] = cap - len(kept)
        if spill and spare:
            spilled = sorted(spill)
            rest = [queries.Candidate(i, campaign_of[i]) for i in spilled]
            pools = pool_members(campaigns, [locked[a] for a in spare])
            for account_id, ids in distribute(rest, spare, pools, weights).items():
                chosen[account_id].extend(ids)
        # Oldest first within each account: its queue sends in this order.
        return {a: sorted(ids) for a, ids in chosen.items() if ids}
