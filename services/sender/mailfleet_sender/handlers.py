"""The send-command subscriber: parse a SendBatch, deliver it, settle it on the broker."""

import asyncio
import logging
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage
from mailfleet_common import topology, tracing
from mailfleet_common.db import DATABASE_AWAY
from mailfleet_common.messages import SendBatch
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from mailfleet_sender.delivery import Account, Deliverer
from mailfleet_sender.membership import CommandLag

log = logging.getLogger(__name__)
_tracer = tracing.get_tracer("mailfleet_sender")


async def deliver_send_batch(
    deliverer: Deliverer,
    lag: CommandLag,
    account: Account,
    message: AbstractIncomingMessage,
    stopping: asyncio.Event,
) -> None:
    """Deliver one SendBatch through its account; ack only once every message is settled."""
    try:
        batch = SendBatch.model_validate_json(message.body)
    except ValidationError as exc:
        log.error(
            "malformed send command dead-lettered",
            extra={"account_id": str(account.id), "error": str(exc)[:500]},
        )
        await _settle(message, "reject")
        return
    if batch.account_id != account.id:
        log.error(
            "send command for another account dead-lettered",
            extra={"account_id": str(account.id), "command_account_id": str(batch.account_id)},
        )
        await _settle(message, "reject")
        return
    if not message.redelivered:
        # How long the command waited for this replica: from when it was dispatched, or
        # from when the account's previous command was done if that was later. A command
        # redelivered (after a hand-over or a closed channel) waited somewhere else.
        waited_from = max(batch.dispatched_at, account.free_at)
        lag.note((datetime.now(UTC) - waited_from).total_seconds())
    try:
        if tracing.enabled() and (parent := tracing.extract(message.headers)) is not None:
            settled = await _deliver_traced(deliverer, account, batch, stopping, parent)
        else:
            settled = await deliverer.deliver_batch(account, batch.message_ids, stopping)
    except DATABASE_AWAY as exc:
        # Only a replica shutting down gives up waiting for the database. The command goes
        # back to the queue whole: what it handled is no longer `assigned` and is skipped.
        log.warning(
            "send command requeued: database unavailable",
            extra={"account_id": str(account.id), "error": repr(exc)},
        )
        await _settle(message, "requeue")
        return
    except Exception:
        # Messages not yet claimed stay `assigned`; the dispatcher's stranded sweep returns
        # them. Dead-lettering (not requeueing) keeps a persistent fault from looping.
        log.exception("send command failed; dead-lettered", extra={"account_id": str(account.id)})
        await _settle(message, "reject")
        return
    await _settle(message, "ack" if settled else "requeue")


async def _deliver_traced(
    deliverer: Deliverer,
    account: Account,
    batch: SendBatch,
    stopping: asyncio.Event,
    parent: Context,
) -> bool:
    """Deliver a command that came with trace context, in a CONSUMER span continuing it.

    The header's context is the command's (its first traced message's dispatch); each message
    continues its own trace from ``batch.traces``.
    """
    with _tracer.start_as_current_span(
        f"{topology.SEND.name} process",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": topology.SEND.name,
            "messaging.batch.message_count": len(batch.message_ids),
            "mailfleet.account_id": str(account.id),
        },
    ):
        return await deliverer.deliver_batch(account, batch.message_ids, stopping, batch.traces)


async def _settle(message: AbstractIncomingMessage, how: str) -> None:
    try:
        if how == "ack":
            await message.ack()
        elif how == "requeue":
            await message.nack(requeue=True)
        else:
            await message.reject(requeue=False)
    except Exception as exc:
        # The channel went away: the broker requeues the command by itself, and every
        # message in it that was handled is no longer `assigned`, so a repeat is harmless.
        log.warning("send command not settled", extra={"how": how, "error": repr(exc)})
