"""Subscribers: parse, call, acknowledge. No SQL here."""

import asyncio
import logging

import asyncpg
from faststream.exceptions import NackMessage, RejectMessage
from faststream.rabbit import RabbitRouter
from mailfleet_common import topology
from mailfleet_common.db import DATABASE_AWAY
from mailfleet_common.messages import (
    AccountPaused,
    RecipientsEnqueued,
    SendAttempts,
    TrackingHits,
)

from mailfleet_dispatcher import recorder
from mailfleet_dispatcher.runtime import Runtime

log = logging.getLogger(__name__)

# Back-off before a message is requeued because the database is unreachable, so a long outage
# is a slow retry rather than a hot loop.
_REQUEUE_DELAY_S = 1.0

_TRANSIENT: tuple[type[BaseException], ...] = (
    *DATABASE_AWAY,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


async def _settle_failure(exc: Exception, what: str) -> None:
    """Requeue after a pause when the database is away; dead-letter anything else."""
    if isinstance(exc, _TRANSIENT):
        log.warning("database unavailable, will retry", extra={"event": what}, exc_info=exc)
        await asyncio.sleep(_REQUEUE_DELAY_S)
        raise NackMessage(requeue=True) from exc
    log.error("cannot record, dead-lettering", extra={"event": what}, exc_info=exc)
    raise RejectMessage from exc


def create_router(runtime: Runtime) -> RabbitRouter:
    """The dispatcher's subscribers, bound to one running dispatcher.

    Payloads that fail validation raise before the handler runs; the default ack policy
    (reject on error) then sends them to the dead-letter exchange of their queue.
    """
    router = RabbitRouter()

    @router.subscriber(topology.ENQUEUE_QUEUE, topology.EVENTS)
    async def assign_enqueued(event: RecipientsEnqueued) -> None:
        """Assign a campaign's newly queued messages now rather than at the next tick."""
        runtime.wake_assigner(event.transactional)

    @router.subscriber(topology.SEND_ATTEMPT_QUEUE, topology.EVENTS)
    async def record_send_attempts(report: SendAttempts) -> None:
        """Record SMTP attempts reported by a sender (redeliveries change nothing)."""
        try:
            await recorder.record_send_attempts(runtime.pool, report)
        except Exception as exc:
            await _settle_failure(exc, "send-attempt")

    @router.subscriber(topology.ACCOUNT_PAUSED_QUEUE, topology.EVENTS)
    async def record_account_paused(event: AccountPaused) -> None:
        """Record that a sender paused an account."""
        try:
            await recorder.record_account_paused(runtime.pool, event)
        except Exception as exc:
            await _settle_failure(exc, "account-paused")

    async def record_tracking_hits(batch: TrackingHits) -> None:
        """Record opens, clicks or unsubscribes reported by a tracker, once each."""
        try:
            await recorder.record_tracking_hits(runtime.pool, batch)
        except Exception as exc:
            await _settle_failure(exc, batch.kind)

    # One queue per kind (so each has its own depth and dead letters), one way of recording.
    for queue in topology.TRACKING_QUEUES.values():
        router.subscriber(queue, topology.EVENTS)(record_tracking_hits)

    return router
