"""The webhook worker: claims due deliveries, posts them, records every attempt.

Several replicas share the outbox: claims skip rows another holds (FOR UPDATE SKIP LOCKED)
and lease what they take by moving its next_attempt_at forward, so a replica killed
mid-request leaves its deliveries due again when the lease expires (at least once: the
receiver may get such a delivery twice, with the same webhook-id). Results are written in
batches by one recorder task. A worker claims no more of an endpoint's deliveries than it
may post at once (per_endpoint), so nothing it holds waits behind its own lease.
"""

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
from mailfleet_common.crypto import SecretBox, SecretBoxError
from mailfleet_common.db import DATABASE_AWAY, Conn, Pool, create_pool, while_database_away
from standardwebhooks.webhooks import Webhook

from mailfleet_webhooks import delivery, metrics, queries
from mailfleet_webhooks.queries import AttemptResult, Claimed, EndpointTally
from mailfleet_webhooks.settings import Settings

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "webhook_deliveries"
_RECORD_BATCH = 500
_CLAIM_GATHER_S = 0.02
_UNREADY: tuple[type[BaseException], ...] = (*DATABASE_AWAY, asyncpg.PostgresError)


def retry_delay_s(schedule: list[float], attempt: int, jitter: float) -> float | None:
    """Seconds before retrying after failed attempt number `attempt`; None: give up."""
    if attempt > len(schedule):
        return None
    base = schedule[attempt - 1]
    return base * random.uniform(1 - jitter, 1 + jitter)  # noqa: S311 - spreading, not secrecy


def tally(results: list[AttemptResult]) -> list[EndpointTally]:
    """Per endpoint: did something succeed, and the failures after the last success."""
    by_endpoint: dict[UUID, list[AttemptResult]] = defaultdict(list)
    for result in sorted(results, key=lambda r: r.attempted_at):
        by_endpoint[result.endpoint_id].append(result)
    tallies = []
    for endpoint_id, seen in by_endpoint.items():
        last_ok = max((i for i, r in enumerate(seen) if r.delivered), default=-1)
        failures = seen[last_ok + 1 :]
        tallies.append(
            EndpointTally(
                endpoint_id,
                last_ok >= 0,
                len(failures),
                failures[0].attempted_at if failures else None,
            )
        )
    return tallies


class WebhookWorker:
    """Delivers the outbox until stopped."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._config = settings.webhooks
        self._box = SecretBox.from_settings(settings.crypto)
        self._pool: Pool | None = None
        self._listener: Conn | None = None
        self._client = delivery.new_client(
            self._config.connect_timeout_s, self._config.timeout_s, self._config.max_in_flight
        )
        self._signers: dict[UUID, tuple[datetime, Webhook]] = {}
        self._in_flight: Counter[UUID] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: list[AttemptResult] = []
        self._wake = asyncio.Event()
        self._recorded = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the webhook worker is not started")
        return self._pool

    async def start(self) -> None:
        self._pool = await create_pool(self._settings.postgres)
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="webhooks-claim"),
            asyncio.create_task(self._record_loop(), name="webhooks-record"),
        ]

    async def stop(self) -> None:
        """Finish the requests under way and record them; leave the rest to the leases."""
        self._stopping.set()
        self._wake.set()
        claim, record = self._loops or (None, None)
        if claim is not None:
            await asyncio.gather(claim, return_exceptions=True)
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=self._config.timeout_s + 1)
            for task in late:
                task.cancel()  # its delivery is posted again once the lease expires
            if late:
                await asyncio.wait(late)
        self._recorded.set()
        if record is not None:
            await asyncio.gather(record, return_exceptions=True)
        await self._client.aclose()
        await self._close_listener()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def is_ready(self) -> bool:
        if self._pool is None:
            return False
        try:
            async with self._pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
        except _UNREADY:
            return False
        return True

    # -- Claiming and posting -----------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            # Cleared before claiming: a notification or a finished request during the claim
            # must still cut the wait below short.
            self._wake.clear()
            self._slot_free.clear()
            claimed: list[Claimed] = []
            asked = 0
            try:
                await self._ensure_listener()
                asked, claimed = await self._claim()
            except DATABASE_AWAY as exc:
                log.warning("claiming webhook deliveries failed: %s", exc)
                await self._close_listener()
            for item in claimed:
                self._start(item)
            full = len(self._tasks) >= self._config.max_in_flight
            if asked and len(claimed) == asked and not full:
                continue  # a full batch: more may be due
            waits = [self._wake.wait()] if not full else []
            waits.append(self._slot_free.wait())
            pending = [asyncio.ensure_future(w) for w in waits]
            await asyncio.wait(pending, timeout=self._config.poll_s, return_when="FIRST_COMPLETED")
            for future in pending:
                future.cancel()
            if self._tasks:
                # Requests finish one by one: gather a few freed slots into one claim rather
                # than a claim (a statement and a commit) per finished request.
                await asyncio.sleep(_CLAIM_GATHER_S)

    async def _claim(self) -> tuple[int, list[Claimed]]:
        """Claim what this worker has room for; returns (how many it asked for, claimed)."""
        room = self._config.max_in_flight - len(self._tasks)
        if room <= 0:
            return 0, []
        per_endpoint = self._config.per_endpoint
        busy = {e: max(0, per_endpoint - n) for e, n in self._in_flight.items()}
        asked = min(room, self._config.batch)
        async with self.pool.acquire() as conn:
            claimed = await queries.claim_due(conn, asked, self._config.lease_s, busy, per_endpoint)
        return asked, claimed

    def _start(self, item: Claimed) -> None:
        self._in_flight[item.endpoint_id] += 1
        task = asyncio.create_task(self._deliver(item, time.monotonic()))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, item.endpoint_id))

    def _finished(self, task: asyncio.Task[None], endpoint_id: UUID) -> None:
        self._tasks.discard(task)
        self._in_flight[endpoint_id] -= 1
        if self._in_flight[endpoint_id] <= 0:
            del self._in_flight[endpoint_id]
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery crashed", exc_info=task.exception())

    def _signer(self, item: Claimed) -> Webhook:
        cached = self._signers.get(item.endpoint_id)
        if cached is None or cached[0] != item.endpoint_version:
            cached = (item.endpoint_version, Webhook(self._box.decrypt(item.secret_enc)))
            self._signers[item.endpoint_id] = cached
        return cached[1]

    async def _deliver(self, item: Claimed, claimed_at: float) -> None:
        try:
            signer = self._signer(item)
        except SecretBoxError:
            log.error(
                "webhook secret cannot be decrypted; run mailfleet check-keys",
                extra={"endpoint_id": str(item.endpoint_id)},
            )
            return  # stays pending; check-keys --forget disables the endpoint
        config = self._config
        metrics.IN_FLIGHT.inc()
        try:
            # Never post what may already be another worker's (a claim answered late).
            if time.monotonic() - claimed_at > config.lease_s - config.timeout_s:
                return
            now = datetime.now().astimezone()
            headers = delivery.signed_headers(signer, f"msg_{item.event_id}", item.body, now)
            refused = (
                None
                if config.allow_private_destinations
                else await delivery.refused_destination(item.url)
            )
            if refused is not None:
                answer = delivery.Response(
                    datetime.now(UTC), None, 0.0, None, refused, refused=True
                )
            else:
                answer = await delivery.post(
                    self._client,
                    item.url,
                    headers,
                    item.body,
                    config.max_response_bytes,
                    config.timeout_s,
                )
        finally:
            metrics.IN_FLIGHT.dec()
        metrics.ATTEMPT_SECONDS.observe(answer.latency_ms / 1000)
        if answer.delivered:
            metrics.ATTEMPTS.labels("delivered").inc()
        elif answer.timed_out:
            metrics.ATTEMPTS.labels("timeout").inc()
        elif answer.refused:
            metrics.ATTEMPTS.labels("refused").inc()
        elif answer.status_code is None:
            metrics.ATTEMPTS.labels("network").inc()
        else:
            metrics.ATTEMPTS.labels("http_error").inc()
        delay = None
        if not answer.delivered:
            delay = retry_delay_s(config.retry_schedule_s, item.attempt, config.jitter)
        self._results.append(
            AttemptResult(
                item.id,
                item.endpoint_id,
                item.attempt,
                answer.attempted_at,
                answer.status_code,
                answer.latency_ms,
                answer.body,
                answer.error,
                answer.delivered,
                None if delay is None else answer.attempted_at + timedelta(seconds=delay),
            )
        )
        self._recorded.set()

    # -- Recording ----------------------------------------------------------------------------

    async def _record_loop(self) -> None:
        while True:
            await self._recorded.wait()
            self._recorded.clear()
            while self._results:
                batch, self._results = self._results[:_RECORD_BATCH], self._results[_RECORD_BATCH:]
                await while_database_away(
                    functools.partial(self._record, batch),
                    "record webhook results",
                    lambda: 10.0 if self._stopping.is_set() else None,
                )
            if self._stopping.is_set() and not self._tasks:
                return

    async def _record(self, batch: list[AttemptResult]) -> None:
        config = self._config
        async with self.pool.acquire() as conn, conn.transaction():
            given_up = await queries.record_results(conn, batch)
            tallies = tally(batch)
            await queries.tally_endpoints(conn, tallies)
            failing = [t.endpoint_id for t in tallies if t.failures]
            disabled = []
            if failing:
                disabled = await queries.disable_failing(
                    conn, failing, config.disable_after_failures, config.disable_after_s
                )
        metrics.GIVEN_UP.inc(given_up)
        for endpoint in disabled:
            metrics.DISABLED.inc()
            log.warning(
                "webhook endpoint disabled",
                extra={
                    "endpoint_id": str(endpoint.endpoint_id),
                    "url": endpoint.url,
                    "reason": endpoint.reason,
                },
            )

    # -- Notifications ------------------------------------------------------------------------

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await asyncpg.connect(self._settings.postgres.dsn)
        await self._listener.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())

    async def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), 5)
            listener.terminate()
