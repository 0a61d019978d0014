"""Publishing what happened: SendAttempts batches and AccountPaused events.

Attempts are handed over only once their outcomes are durable, and published in the
background: the database is the truth, so the bus may lag it safely.
"""

import asyncio
import logging
from typing import Protocol

from mailfleet_common import topology
from mailfleet_common.messages import SendAttempt, SendAttempts
from pydantic import BaseModel

log = logging.getLogger(__name__)


class EventPublisher(Protocol):
    async def publish_event(self, event: BaseModel, routing_key: str) -> None:
        """Publish a persistent event to the events exchange."""


class AttemptReporter:
    """Publishes SendAttempts in batches, in the order their outcomes were written."""

    def __init__(self, publisher: EventPublisher, max_batch: int, linger_s: float = 0.1) -> None:
        self._publisher = publisher
        self._max = max_batch
        self._linger = linger_s
        self._pending: list[SendAttempt] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="attempt-reporter")

    def add(self, attempts: list[SendAttempt]) -> None:
        self._pending.extend(attempts)
        self._wakeup.set()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Publish what is pending (giving up after the timeout), then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                log.error("attempts left unpublished", extra={"count": len(self._pending)})

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._linger and len(self._pending) < self._max and not self._closing:
                # One bus message costs about as much CPU as a few dozen attempts in it.
                await asyncio.sleep(self._linger)
            batch = self._pending[: self._max]
            try:
                await self._publisher.publish_event(
                    SendAttempts.model_construct(attempts=batch), topology.SEND_ATTEMPT_KEY
                )
            except Exception as exc:
                failures += 1
                log.warning("publishing attempts failed", extra={"error": repr(exc)})
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))
                continue
            failures = 0
            del self._pending[: len(batch)]
