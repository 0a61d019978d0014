"""Group commit of claims and outcomes: every connection's writes in one round trip.

A connection hands in the outcome of its previous message together with the claim of its
next one. Both land in the same statement, so a connection never holds a claimed message
while an earlier outcome of its own is still only in memory: a crash leaves at most one
`sending` message per open SMTP connection.

While the database is away (a restart, a failover) a group is held and written again until
it lands: an outcome the SMTP server accepted is recorded once the database is back, and the
connection that handed it in waits meanwhile instead of claiming anything.
"""

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import asyncpg
from mailfleet_common.db import Pool, while_database_away
from mailfleet_common.messages import SendAttempt

from mailfleet_sender import queries
from mailfleet_sender.metrics import FLUSH_SECONDS, FLUSH_SIZE, NOT_CLAIMABLE, SUPPRESSED
from mailfleet_sender.queries import ClaimedMessage, FlushArrays, FlushResult

log = logging.getLogger(__name__)

# A replica shutting down holds its last outcomes this long for the database, then gives up
# (its `sending` messages then become `uncertain`, as after a crash).
_CLOSING_HOLD_S = 10.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """The durable result of one SMTP attempt, and its report."""

    message_id: int
    status: str  # sent | deferred | failed
    code: int | None
    error: str | None
    next_attempt_at: datetime | None
    attempt: SendAttempt


@dataclass(frozen=True, slots=True)
class Claim:
    message_id: int
    account_id: UUID
    domain: str  # the Message-ID's right-hand side: the account's From domain


@dataclass(slots=True)
class _Request:
    outcome: Outcome | None
    claim: Claim | None
    done: asyncio.Future[ClaimedMessage | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Committer:
    """Collects claims and outcomes from every connection and writes them in groups."""

    def __init__(
        self,
        pool: Pool,
        replica_id: str,
        report: Callable[[list[SendAttempt]], None],
        linger_ms: float,
        max_group: int,
        concurrency: int = 1,
    ) -> None:
        self._pool = pool
        self._replica_id = replica_id
        self._report = report
        self._linger = linger_ms / 1000
        self._max = max_group
        self._pending: list[_Request] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # Several groups may be in flight: a request then waits for its own commit only, not
        # for the one that was already running when it arrived. Row locks order any two
        # statements touching the same message.
        self._slots = asyncio.Semaphore(concurrency)
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="claims-committer")

    async def submit(self, outcome: Outcome | None, claim: Claim | None) -> ClaimedMessage | None:
        """Make `outcome` durable and try `claim`; returns the claimed message or None.

        None means the message is not to be sent: already handled, cancelled, its account or
        campaign halted, or its address suppressed (then it is cancelled here).
        """
        if outcome is None and claim is None:
            return None
        request = _Request(outcome, claim)
        self._pending.append(request)
        self._wakeup.set()
        return await request.done

    async def close(self) -> None:
        """Write what is pending, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    await asyncio.gather(*self._inflight)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            if self._linger and len(self._pending) < self._max and not self._closing:
                await asyncio.sleep(self._linger)
            group, self._pending = self._take_group()
            task = asyncio.create_task(self._flush_in_slot(group))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _flush_in_slot(self, group: list[_Request]) -> None:
        try:
            await self._flush(group)
        finally:
            self._slots.release()

    def _take_group(self) -> tuple[list[_Request], list[_Request]]:
        # The same message claimed twice in one statement would let both claimants see it
        # returned; a repeat waits for the next group, where the first claim has settled.
        group: list[_Request] = []
        rest: list[_Request] = []
        claimed: set[int] = set()
        for request in self._pending:
            claim = request.claim
            if len(group) >= self._max or (claim is not None and claim.message_id in claimed):
                rest.append(request)
                continue
            if claim is not None:
                claimed.add(claim.message_id)
            group.append(request)
        return group, rest

    async def _flush(self, group: list[_Request]) -> None:
        arrays = FlushArrays([], [], [], [], [], [], [], [], [])
        for request in group:
            if (outcome := request.outcome) is not None:
                arrays.outcome_ids.append(outcome.message_id)
                arrays.outcome_statuses.append(outcome.status)
                arrays.outcome_codes.append(outcome.code)
                arrays.outcome_errors.append(outcome.error)
                arrays.outcome_retry_at.append(outcome.next_attempt_at)
            if (claim := request.claim) is not None:
                arrays.claim_ids.append(claim.message_id)
                arrays.claim_accounts.append(claim.account_id)
                # Uniqueness comes from the message id; this only makes Message-IDs unguessable.
                arrays.claim_tokens.append(f"{random.getrandbits(48):012x}")
                arrays.claim_domains.append(claim.domain)
        started = time.perf_counter()
        try:
            result = await self._write(arrays)
        except Exception as exc:
            for request in group:
                if not request.done.done():
                    request.done.set_exception(exc)
            return
        FLUSH_SECONDS.observe(time.perf_counter() - started)
        FLUSH_SIZE.observe(len(arrays.outcome_ids) + len(arrays.claim_ids))
        attempts = []
        for request in group:
            if (outcome := request.outcome) is not None:
                attempts.append(outcome.attempt)
                if outcome.message_id not in result.recorded:
                    log.warning(
                        "outcome not recorded: message no longer in sending",
                        extra={"message_id": outcome.message_id, "outcome": outcome.status},
                    )
            claimed = None
            if (claim := request.claim) is not None:
                claimed = result.claimed.get(claim.message_id)
                if claimed is None:
                    skipped = SUPPRESSED if claim.message_id in result.suppressed else NOT_CLAIMABLE
                    skipped.inc()
            request.done.set_result(claimed)
        if attempts:
            self._report(attempts)

    async def _write(self, arrays: FlushArrays) -> FlushResult:
        # Outcomes must not be lost to a database outage: the group is written again until it
        # lands. A repeated statement is safe: every update in it is a compare-and-set.
        async def write() -> FlushResult:
            async with self._pool.acquire() as conn:
                try:
                    return await queries.record_outcomes_and_claim(conn, self._replica_id, arrays)
                except asyncpg.InternalClientError:
                    # Its protocol state is broken: the pool must not hand it out again.
                    conn.terminate()
                    raise

        return await while_database_away(
            write,
            "group commit",
            lambda: _CLOSING_HOLD_S if self._closing else None,
        )
