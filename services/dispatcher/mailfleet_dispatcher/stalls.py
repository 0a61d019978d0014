"""Re-issuing lost send commands: accounts whose assigned work stopped moving.

A send command can be lost after its messages were assigned: the dispatcher died between its
commit and the publish, the broker went away mid-publish, or a sender dead-lettered it. Its
messages then sit `assigned`, filling the account's look-ahead, and nothing would send them
until the stranded sweep. A sender works an account's commands in order, so the oldest
assigned message (of a running campaign, for an active account) shows whether the account
moves. When it has not moved for `stall_s` plus the account's pace:

- if a message of a later tick is `sending`, the older one was skipped: its command is gone;
- if nothing is `sending` and the account's queue holds no command, its command is gone;
- if an older or same-tick message is `sending`, a slow SMTP conversation holds it: wait.

A busy sender replica holds commands delivered to it for a while before it starts them, and
meanwhile they are neither in the queue nor `sending`: each replica reports how long its
commands waited lately with its heartbeat, and the watch waits twice the longest of those
longer before it takes a command for lost.

The messages then get their commands again. A repeated command is harmless: a claim is a
compare-and-set from `assigned`, so whatever was handled already is skipped.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from mailfleet_common.db import Pool

from mailfleet_dispatcher import metrics, queries
from mailfleet_dispatcher.bus import Bus
from mailfleet_dispatcher.queries import InflightTick
from mailfleet_dispatcher.settings import DispatchSettings
from mailfleet_dispatcher.sweeps import repeat

log = logging.getLogger(__name__)


@dataclass
class _Front:
    """An account's oldest assigned tick and how many of its messages were left, since when."""

    oldest_at: datetime
    left: int
    since: float


@dataclass
class _Account:
    """One account's in-flight work: its oldest assigned tick, and the ticks being sent."""

    min_gap_ms: int
    oldest_at: datetime | None = None
    left: int = 0
    sending: list[datetime] = field(default_factory=list)


class StallWatch:
    """Checks every `stall_check_s` for accounts whose commands were lost, and re-issues them."""

    def __init__(
        self, pool: Pool, bus: Bus, settings: DispatchSettings, replica_timeout_s: float
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._settings = settings
        self._replica_timeout_s = replica_timeout_s
        self._fronts: dict[UUID, _Front] = {}

    async def run(self, stopping: asyncio.Event) -> None:
        """Check until `stopping` is set."""
        await repeat(self.check, self._settings.stall_check_s, stopping, "stall check")

    async def check(self) -> int:
        """Look once; returns how many messages got their commands again."""
        async with self._pool.acquire() as conn:
            ticks = await queries.inflight_ticks(conn)
            # Commands wait at a busy replica before it starts them; allow twice as long.
            lag_s = 2 * await queries.sender_command_lag(conn, self._replica_timeout_s)
        now = time.monotonic()
        stalled: dict[UUID, datetime | None] = {}
        for account_id, account in _by_account(ticks).items():
            if account.oldest_at is None:
                continue
            front = self._fronts.get(account_id)
            if front is None or (front.oldest_at, front.left) != (account.oldest_at, account.left):
                self._fronts[account_id] = _Front(account.oldest_at, account.left, now)
                continue
            waited = now - front.since
            if waited < self._settings.stall_s + account.min_gap_ms / 1000:
                continue
            later = [at for at in account.sending if at > account.oldest_at]
            if later:
                stalled[account_id] = max(later)
            elif not account.sending:
                if waited < self._settings.stall_s + account.min_gap_ms / 1000 + lag_s:
                    continue  # its command may wait at a busy replica
                stalled[account_id] = None
            else:
                continue  # an older message is in an SMTP conversation
            front.since = now  # one re-issue per `stall_s`, however long the stall lasts
        present = {tick.account_id for tick in ticks}
        for account_id in [a for a in self._fronts if a not in present]:
            del self._fronts[account_id]
        reissued = 0
        for account_id, before in stalled.items():
            reissued += await self._reissue(account_id, before)
        return reissued

    async def _reissue(self, account_id: UUID, before: datetime | None) -> int:
        if before is None and await self._bus.commands_waiting(account_id):
            return 0  # its commands wait for a sender to take the queue
        async with self._pool.acquire() as conn:
            ids = await queries.assigned_before(conn, account_id, before)
        if not ids or not await self._bus.publish_batches({account_id: ids}):
            return 0
        log.warning(
            "send commands re-issued: the account's assigned messages stopped moving",
            extra={"account_id": str(account_id), "messages": len(ids)},
        )
        metrics.SWEPT.labels("reissued").inc(len(ids))
        return len(ids)


def _by_account(ticks: list[InflightTick]) -> dict[UUID, _Account]:
    accounts: dict[UUID, _Account] = {}
    for tick in ticks:
        account = accounts.setdefault(tick.account_id, _Account(tick.min_gap_ms))
        if tick.status == "sending":
            account.sending.append(tick.assigned_at)
        elif account.oldest_at is None or tick.assigned_at < account.oldest_at:
            account.oldest_at, account.left = tick.assigned_at, tick.count
    return accounts
