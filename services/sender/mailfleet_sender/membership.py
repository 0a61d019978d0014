"""Live sender replicas and which of them owns each account.

Ownership is rendezvous (highest random weight) hashing of (account, replica): every replica
computes the same owner from the same live set, and a replica joining or leaving moves only
the accounts it gains or loses.
"""

import hashlib
import logging
import secrets
from uuid import UUID

from mailfleet_common.db import Pool

from mailfleet_sender import queries
from mailfleet_sender.metrics import COMMAND_LAG, REPLICAS_LIVE

log = logging.getLogger(__name__)


def new_replica_id() -> str:
    return secrets.token_hex(8)


def _weight(account_id: UUID, replica_id: str) -> int:
    digest = hashlib.blake2b(account_id.bytes + replica_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(account_id: UUID, replicas: frozenset[str]) -> str:
    """The replica that should deliver for the account."""
    return max(replicas, key=lambda replica: (_weight(account_id, replica), replica))


class CommandLag:
    """How long send commands waited for this replica before it started them.

    From the command's dispatch, or from the end of the account's previous command if that
    came later: a paced account's next command waiting its turn says nothing about the
    replica.

    The largest wait seen since the previous heartbeat, or half the previous report if that
    is larger: a replica that was busy a moment ago still reports it for a few beats.
    Measured against the command's `dispatched_at`, so it assumes the clocks of dispatcher
    and sender agree to well under a second (NTP).
    """

    def __init__(self) -> None:
        self._window = 0.0
        self._reported = 0.0

    def note(self, waited_s: float) -> None:
        self._window = max(self._window, waited_s)

    def report(self) -> float:
        """The lag to publish now, in seconds; starts a new window."""
        self._reported = max(self._window, self._reported / 2)
        self._window = 0.0
        COMMAND_LAG.set(self._reported)
        return self._reported


class Membership:
    """This replica's heartbeat and its view of the live replicas."""

    def __init__(self, pool: Pool, replica_id: str, timeout_s: float) -> None:
        self._pool = pool
        self.replica_id = replica_id
        self._timeout_s = timeout_s
        self.live: frozenset[str] = frozenset({replica_id})
        self.lag = CommandLag()

    def owns(self, account_id: UUID) -> bool:
        return owner_of(account_id, self.live) == self.replica_id

    async def observe(self) -> bool:
        """Refresh the live set without announcing ourselves; returns whether it changed."""
        async with self._pool.acquire() as conn:
            live = await queries.list_live_replicas(conn, self._timeout_s)
        return self._update(live)

    async def beat(self) -> bool:
        """Heartbeat, then refresh the live set; returns whether it changed."""
        async with self._pool.acquire() as conn:
            await queries.beat_heart(conn, self.replica_id, round(self.lag.report() * 1000))
            live = await queries.list_live_replicas(conn, self._timeout_s)
        return self._update(live)

    def _update(self, live: list[str]) -> bool:
        current = frozenset({*live, self.replica_id})
        REPLICAS_LIVE.set(len(current))
        if current == self.live:
            return False
        log.info(
            "sender replicas changed",
            extra={"replica": self.replica_id, "live": sorted(current)},
        )
        self.live = current
        return True

    async def leave(self) -> None:
        async with self._pool.acquire() as conn:
            await queries.delete_replica(conn, self.replica_id)
