"""The fleet gauges: backlog, accounts and their rates, computed by one dispatcher replica.

Scraping must stay cheap however large the fleet: the gauges are computed once per interval,
by the replica holding an advisory lock on a connection of its own, and /metrics serves the
last result. A replica without the lock exports none of them, so summing or alerting over
replicas never counts the fleet twice. The lock goes with its connection: when the holder
dies, PostgreSQL releases it and another replica takes it at its next try, within an interval.
"""

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from uuid import UUID

import asyncpg
from mailfleet_common.settings import AccountRateSettings
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mailfleet_dispatcher import queries
from mailfleet_dispatcher.assignment import capacity, pool_members, seconds_left_today

log = logging.getLogger(__name__)

BACKLOG_STATES = ("queued", "assigned", "deferred", "sending", "uncertain")
ACCOUNT_STATUSES = ("active", "paused", "disabled", "archived")
# Accounts that get per-account series for their day: those that can send, and those an
# operator has to look at. Disabled and archived ones are only counted.
_DAY_STATUSES = frozenset({"active", "paused"})


@dataclass(frozen=True)
class AccountGauges:
    """One account's per-account series; rates only when it has sends in the window."""

    sent_today: int
    daily_limit: int
    paused_reason: str | None = None
    bounce_rate: float | None = None
    complaint_rate: float | None = None


@dataclass(frozen=True)
class FleetSnapshot:
    """Every fleet gauge as of one refresh."""

    backlog: queries.Backlog
    sendable: int
    accounts_by_status: dict[str, int]
    accounts: dict[str, AccountGauges]
    rate_max: dict[str, float]
    campaigns_running: int
    suppressions: int
    refreshed_at: float = field(default_factory=time.time)


def sendable(
    assigned: int,
    accounts: Sequence[queries.AccountDay],
    campaigns: Sequence[queries.CampaignDue],
    seconds_left: float,
) -> int:
    """Messages that could go out now within the active accounts' capacity left today.

    The assigned ones (their capacity is reserved already), plus each running campaign's due
    messages up to the capacity its pool has left (assignment.capacity(): the limit left, warm-up
    included, capped by the pace), the whole capped by the capacity of every account some
    campaign can use. Pools that overlap share capacity, so where they do this is an upper
    bound.
    """
    rooms = [
        queries.AccountRoom(a.id, a.min_gap_ms, a.tags, a.effective_limit, a.reserved, 0)
        for a in accounts
        if a.status == "active" and not a.held
    ]
    room = {r.id: capacity(r, seconds_left) for r in rooms}
    members = pool_members([c.campaign for c in campaigns], rooms)
    wanted = 0
    used: set[UUID] = set()
    for c in campaigns:
        pool = members[c.campaign.id]
        ids: Iterable[UUID] = room.keys() if pool is None else pool
        wanted += min(c.due, sum(room[a] for a in ids))
        used.update(ids)
    return assigned + min(wanted, sum(room[a] for a in used))


async def compute(conn: queries.Conn, rates: AccountRateSettings) -> FleetSnapshot:
    """Read the fleet in one consistent snapshot and compute every gauge from it."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        day: date = await queries.utc_today(conn)
        backlog = await queries.backlog(conn)
        accounts = await queries.accounts_today(conn, day)
        by_status = await queries.accounts_by_status(conn)
        windows = await queries.account_rates(conn, rates.rate_window_sends)
        campaigns = await queries.campaigns_due(conn)
        running, suppressions = await queries.fleet_counts(conn)
    by_id = {r.account_id: r for r in windows}
    gauges: dict[str, AccountGauges] = {}
    for a in accounts:
        window = by_id.get(a.id)
        if a.status not in _DAY_STATUSES:
            continue
        gauges[str(a.id)] = AccountGauges(
            sent_today=a.sent,
            daily_limit=a.effective_limit,
            paused_reason=(a.status_reason or "") if a.status == "paused" else None,
            bounce_rate=None if window is None else window.hard_bounces / window.sends,
            complaint_rate=None if window is None else window.complaints / window.sends,
        )
    return FleetSnapshot(
        backlog=backlog,
        sendable=sendable(backlog.assigned, accounts, campaigns, seconds_left_today()),
        accounts_by_status={s: by_status.get(s, 0) for s in ACCOUNT_STATUSES},
        accounts=gauges,
        rate_max={"bounce": rates.bounce_rate_max, "complaint": rates.complaint_rate_max},
        campaigns_running=running,
        suppressions=suppressions,
    )


def _families(s: FleetSnapshot) -> Iterator[Metric]:
    backlog = GaugeMetricFamily(
        "mailfleet_backlog_messages", "Messages not finished, by state.", labels=["state"]
    )
    for state in BACKLOG_STATES:
        backlog.add_metric([state], getattr(s.backlog, state))
    yield backlog
    yield GaugeMetricFamily(
        "mailfleet_backlog_oldest_queued_age_seconds",
        "Age of the oldest queued message of a running campaign whose start has come (0: none).",
        value=s.backlog.oldest_queued_age_s,
    )
    yield GaugeMetricFamily(
        "mailfleet_backlog_sendable_messages",
        "Messages that could go out now within the active accounts' capacity left today "
        "(assigned ones included): the signal to scale senders by.",
        value=s.sendable,
    )
    sent = GaugeMetricFamily(
        "mailfleet_account_sent_today",
        "Messages the account sent today (UTC); active and paused accounts.",
        labels=["account"],
    )
    limit = GaugeMetricFamily(
        "mailfleet_account_daily_limit",
        "The account's effective limit today, warm-up included; active and paused accounts.",
        labels=["account"],
    )
    paused = GaugeMetricFamily(
        "mailfleet_account_paused", "1 per paused account, with why.", labels=["account", "reason"]
    )
    bounce = GaugeMetricFamily(
        "mailfleet_account_bounce_rate",
        "Hard bounces among the account's sends in the bouncer's window (accounts with sends).",
        labels=["account"],
    )
    complaint = GaugeMetricFamily(
        "mailfleet_account_complaint_rate",
        "Complaints among the account's sends in the bouncer's window (accounts with sends).",
        labels=["account"],
    )
    for account, g in s.accounts.items():
        sent.add_metric([account], g.sent_today)
        limit.add_metric([account], g.daily_limit)
        if g.paused_reason is not None:
            paused.add_metric([account, g.paused_reason], 1)
        if g.bounce_rate is not None:
            bounce.add_metric([account], g.bounce_rate)
        if g.complaint_rate is not None:
            complaint.add_metric([account], g.complaint_rate)
    yield from (sent, limit, paused, bounce, complaint)
    rate_max = GaugeMetricFamily(
        "mailfleet_account_rate_max",
        "The rates above which the bouncer pauses an account, by kind.",
        labels=["kind"],
    )
    for kind, value in s.rate_max.items():
        rate_max.add_metric([kind], value)
    yield rate_max
    accounts = GaugeMetricFamily("mailfleet_accounts", "Accounts by status.", labels=["status"])
    for status, n in s.accounts_by_status.items():
        accounts.add_metric([status], n)
    yield accounts
    yield GaugeMetricFamily(
        "mailfleet_campaigns_running", "Campaigns running.", value=s.campaigns_running
    )
    yield GaugeMetricFamily(
        "mailfleet_suppressions",
        "Suppressions in force (permanent or not yet expired).",
        value=s.suppressions,
    )
    yield GaugeMetricFamily(
        "mailfleet_fleet_gauges_refreshed_timestamp_seconds",
        "Unix time of the last refresh of the fleet gauges by this replica.",
        value=s.refreshed_at,
    )


class FleetCollector(Collector):
    """Serves the last snapshot while this replica holds the lock, and nothing otherwise.

    Each refresh replaces the whole snapshot, so an account archived or resumed since the
    last one loses its series at once. The snapshot is also formatted once, when it is
    published (`exposition()`): at 10,000 accounts formatting its ~40,000 series costs
    about a tenth of a second, which every scrape would otherwise spend on the event loop
    that runs the assignment.
    """

    def __init__(self) -> None:
        self.snapshot: FleetSnapshot | None = None
        self._rendered = b""

    def collect(self) -> Iterable[Metric]:
        snapshot = self.snapshot
        return () if snapshot is None else list(_families(snapshot))

    async def publish(self, snapshot: FleetSnapshot) -> None:
        """Export `snapshot` from now on, formatted in a worker thread."""
        self._rendered = await asyncio.to_thread(_render, snapshot)
        self.snapshot = snapshot

    def clear(self) -> None:
        """Export nothing."""
        self.snapshot = None
        self._rendered = b""

    def exposition(self) -> bytes:
        """The published snapshot in the Prometheus text format (empty when there is none)."""
        return self._rendered if self.snapshot is not None else b""


def _render(snapshot: FleetSnapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Frozen(snapshot))
    return generate_latest(registry)


class _Frozen(Collector):
    def __init__(self, snapshot: FleetSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return _families(self._snapshot)


# The dispatcher's /metrics appends its exposition to the default registry's.
COLLECTOR = FleetCollector()


async def connect(dsn: str) -> "asyncpg.Connection[asyncpg.Record]":
    """The connection the gauges are computed on (and the lock held by)."""
    # No JIT: over a large fleet the planner expects costly statements, which are index
    # probes in fact; compiling them took longer than running them (0.16 s at 10,000).
    return await asyncpg.connect(dsn, server_settings={"jit": "off"})


class FleetGauges:
    """Takes the lock when it is free, and while holding it refreshes every interval."""

    def __init__(
        self,
        dsn: str,
        collector: FleetCollector,
        interval_s: float,
        rates: AccountRateSettings,
    ) -> None:
        self._dsn = dsn
        self._collector = collector
        self._interval_s = interval_s
        self._rates = rates
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self.leader = False

    async def run(self, stopping: asyncio.Event) -> None:
        """Refresh (or try for the lock) every interval until `stopping` is set."""
        try:
            while not stopping.is_set():
                await self.step()
                try:
                    async with asyncio.timeout(self._interval_s):
                        await stopping.wait()
                except TimeoutError:
                    pass
        finally:
            await self.release()

    async def step(self) -> bool:
        """One interval: take the lock if free, then refresh; whether this replica exports."""
        try:
            if self._conn is None or self._conn.is_closed():
                self.leader = False
                self._conn = await connect(self._dsn)
            if not self.leader:
                self.leader = await queries.try_fleet_gauges_lock(self._conn)
                if self.leader:
                    log.info("this replica computes the fleet gauges")
            if self.leader:
                started = time.perf_counter()
                await self._collector.publish(await compute(self._conn, self._rates))
                log.debug(
                    "fleet gauges refreshed",
                    extra={"seconds": round(time.perf_counter() - started, 3)},
                )
            else:
                self._collector.clear()
        except Exception as exc:
            # Unsure whether the lock is still ours: export nothing, and start over on a new
            # connection (closing this one gives the lock up if it was held).
            log.warning("fleet gauges not refreshed", extra={"error": repr(exc)})
            await self.release()
        return self._collector.snapshot is not None

    async def release(self) -> None:
        """Export nothing and give the lock up with the connection."""
        self._collector.clear()
        self.leader = False
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                async with asyncio.timeout(2):
                    await conn.close()
            except Exception:
                conn.terminate()
