"""Unsubscribing: suppress the address, then wait until nothing is being sent to it.

The promise is that no message reaches an SMTP server after the unsubscribe has returned.
suppress_address() cancels every message not yet claimed. A sender claims a message with an
UPDATE to `sending` that takes the same row lock as the cancelling UPDATE, so a claim either
came first (the message is `sending` when the cancel sees it) or finds it cancelled. What is
`sending` once the suppression committed is all that can still go out; it is waited for.
"""

import asyncio
import logging
import time
from dataclasses import dataclass

from mailfleet_common.db import Pool

from mailfleet_tracker import metrics, queries

log = logging.getLogger(__name__)

REASON = "unsubscribed"
# Per statement: a database that does not answer in this time counts as unavailable.
STATEMENT_TIMEOUT_S = 5.0
POLL_S = 0.05


@dataclass(frozen=True)
class Unsubscribed:
    scope: str  # 'global' or 'campaign'
    cancelled: int
    settled: bool  # False if a message was still being sent when the wait gave up


async def unsubscribe(pool: Pool, message_id: int, settle_s: float) -> Unsubscribed | None:
    """Unsubscribe the message's recipient; None if there is no such message.

    Repeating it is harmless: the suppression exists already and nothing is left to cancel.
    Database errors propagate; the caller answers 503 and the client may try again.
    """
    started = time.perf_counter()
    async with asyncio.timeout(STATEMENT_TIMEOUT_S), pool.acquire() as conn:
        recipient = await queries.message_recipient(conn, message_id)
        if recipient is None:
            return None
        cancelled = await queries.suppress_address(
            conn, recipient.email, recipient.scope_campaign, REASON, f"tracker:message:{message_id}"
        )
    settled = await _wait_until_not_sending(pool, recipient, settle_s)
    if not settled:
        metrics.UNSETTLED.inc()
        log.warning(
            "unsubscribed while a message to the address is still being sent",
            extra={"message_id": message_id, "waited_s": settle_s},
        )
    metrics.UNSUBSCRIBE_SECONDS.observe(time.perf_counter() - started)
    return Unsubscribed(recipient.scope, cancelled, settled)


async def _wait_until_not_sending(
    pool: Pool, recipient: queries.Recipient, settle_s: float
) -> bool:
    # One connection per look rather than one held throughout: a few slow SMTP servers
    # must not tie up the pool that every other unsubscribe needs.
    deadline = time.monotonic() + settle_s
    while True:
        async with asyncio.timeout(STATEMENT_TIMEOUT_S), pool.acquire() as conn:
            sending = await queries.count_sending(conn, recipient.email, recipient.scope_campaign)
        if sending == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)
