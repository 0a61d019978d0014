"""The dispatcher's RabbitMQ side: what it declares, the commands and events it publishes."""

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import aiormq
import aiormq.abc
from faststream.rabbit import RabbitBroker
from mailfleet_common import topology, tracing
from mailfleet_common.messages import MessagesUncertain, SendBatch, UrgentSends
from mailfleet_common.publishing import BROKER_AWAY
from opentelemetry.trace import Span, SpanKind, StatusCode

from mailfleet_dispatcher import metrics
from mailfleet_dispatcher.assignment import Traces

log = logging.getLogger(__name__)
_tracer = tracing.get_tracer("mailfleet_dispatcher")


def _command_properties(headers: dict[str, Any] | None = None) -> aiormq.spec.Basic.Properties:
    """Properties for one command, never shared.

    The client stamps a message id on them, by which it matches a returned command to its
    publish.
    """
    return aiormq.spec.Basic.Properties(
        content_type="application/json", delivery_mode=1, headers=headers
    )


def _dispatch_spans(account_id: UUID, ids: Sequence[int], traces: Traces) -> dict[int, Span]:
    """One PRODUCER span per traced message, continuing its enqueue's trace.

    It starts with the tick that assigned the message and ends once its command is published.
    """
    spans = {}
    for message_id in ids:
        parent = traces.parents.get(message_id)
        if parent is not None:
            spans[message_id] = _tracer.start_span(
                f"{topology.SEND.name} publish",
                context=tracing.context_from(parent),
                kind=SpanKind.PRODUCER,
                start_time=traces.started_ns,
                attributes={
                    "messaging.system": "rabbitmq",
                    "messaging.operation.type": "publish",
                    "messaging.destination.name": topology.SEND.name,
                    "messaging.rabbitmq.destination.routing_key": str(account_id),
                    "mailfleet.message_id": message_id,
                    "mailfleet.account_id": str(account_id),
                },
            )
    return spans


class CommandRefusedError(Exception):
    """The broker did not take a send command: refused (nack) or unroutable."""


class Bus:
    """Publishes SendBatch commands and MessagesUncertain events through one broker."""

    def __init__(self, broker: RabbitBroker, batch_size: int) -> None:
        self._broker = broker
        self._batch_size = batch_size

    async def declare_topology(self) -> None:
        """Declare the exchanges this service publishes to, and the dead-letter queue.

        Done before the subscribers start, so a message rejected at once still has somewhere
        to go.
        """
        for exchange in (topology.EVENTS, topology.SEND, topology.URGENT):
            await self._broker.declare_exchange(exchange)
        dead = await self._broker.declare_exchange(topology.DEAD)
        queue = await self._broker.declare_queue(topology.DEAD_LETTER_QUEUE)
        await queue.bind(dead, routing_key="")

    async def _command_channel(self) -> aiormq.abc.AbstractChannel:
        """The broker's publishing channel (publisher confirms on), at the AMQP level."""
        channel = await self._broker.config.channel_manager.get_channel()
        underlay: aiormq.abc.AbstractChannel = await channel.get_underlay_channel()
        return underlay

    async def _declare_send_queue(
        self, channel: aiormq.abc.AbstractChannel, account_id: UUID
    ) -> None:
        """Declare the account's queue and bind it to the send exchange."""
        spec = topology.send_queue(account_id)
        await channel.queue_declare(spec.name, durable=True, arguments=spec.arguments)
        await channel.queue_bind(spec.name, topology.SEND.name, routing_key=spec.routing_key)

    async def _publish_command(
        self,
        channel: aiormq.abc.AbstractChannel,
        account_id: UUID,
        body: bytes,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish one command to the account's queue, declaring the queue if it has none.

        Published mandatory: a command the exchange cannot route (the account's queue was
        never declared, or was deleted) comes back instead of being dropped, and goes out
        again once the queue is declared and bound. Declaring every account's queue before
        its first command instead cost the broker about as much as the command itself, and
        could not see a queue deleted since.
        """
        for attempt in range(2):
            confirmation = None
            try:
                confirmation = await channel.basic_publish(
                    body,
                    exchange=topology.SEND.name,
                    routing_key=str(account_id),
                    properties=_command_properties(headers),
                    mandatory=True,
                )
                # With confirms, a returned command is confirmed by the message itself.
                returned = isinstance(confirmation, aiormq.abc.DeliveredMessage)
            except aiormq.exceptions.PublishError:
                returned = True
            if isinstance(confirmation, aiormq.spec.Basic.Nack):
                raise CommandRefusedError(
                    f"the broker refused the command for account {account_id}"
                )
            if not returned:
                return
            if attempt == 0:
                await self._declare_send_queue(channel, account_id)
        raise CommandRefusedError(f"the command for account {account_id} could not be routed")

    async def _publish_account(
        self, account_id: UUID, message_ids: Sequence[int], traces: Traces | None
    ) -> int:
        try:
            channel = await self._command_channel()
            published = 0
            # In order: a sender delivers an account's commands in the order they arrive.
            for start in range(0, len(message_ids), self._batch_size):
                ids = list(message_ids[start : start + self._batch_size])
                if traces is not None and traces.parents:
                    await self._publish_traced(channel, account_id, ids, traces)
                    published += 1
                    continue
                command = SendBatch(
                    account_id=account_id, message_ids=ids, dispatched_at=datetime.now(UTC)
                )
                # Straight onto the channel, the body being all a sender reads: a tick with
                # thousands of accounts publishes a command for each, and the broker client's
                # own publish path (middlewares, message building) cost several times more.
                # Not persistent, unlike events: a command is derived state (its messages are
                # `assigned` in PostgreSQL) and one lost with a broker restart is issued again
                # by the stall watch within seconds. Persisting it cost the broker about 1.3 ms
                # of CPU per command once commands spread over thousands of queues (each
                # queue's own index on disk), eight times the transient cost.
                body = command.model_dump_json(exclude_none=True).encode()
                await self._publish_command(channel, account_id, body)
                published += 1
        except BROKER_AWAY as exc:
            # The messages stay `assigned`; the stall watch commands them again once the
            # broker is back.
            metrics.BATCH_PUBLISH_FAILURES.inc()
            log.warning(
                "send commands not published: broker unavailable",
                extra={"account_id": str(account_id), "error": repr(exc)},
            )
            return 0
        except Exception:
            # The messages stay `assigned`; the stall watch or the stranded sweep recovers them.
            metrics.BATCH_PUBLISH_FAILURES.inc()
            log.exception("could not publish send commands", extra={"account_id": str(account_id)})
            return 0
        metrics.BATCHES_PUBLISHED.inc(published)
        return published

    async def _publish_traced(
        self,
        channel: aiormq.abc.AbstractChannel,
        account_id: UUID,
        ids: list[int],
        traces: Traces,
    ) -> None:
        """Publish one command carrying the trace context of each of its traced messages.

        The ``traceparent`` header names the first traced message's dispatch, for whatever
        reads the standard header; the sender continues each message's own from the body.
        """
        spans = _dispatch_spans(account_id, ids, traces)
        command = SendBatch(
            account_id=account_id,
            message_ids=ids,
            dispatched_at=datetime.now(UTC),
            traces={i: tracing.span_traceparent(span) for i, span in spans.items()} or None,
        )
        headers: dict[str, Any] | None = None
        if spans:
            headers = {}
            tracing.inject(headers, next(iter(spans.values())))
        try:
            body = command.model_dump_json(exclude_none=True).encode()
            await self._publish_command(channel, account_id, body, headers)
        except Exception as exc:
            for span in spans.values():
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR)
            raise
        finally:
            for span in spans.values():
                span.end()

    async def publish_batches(
        self, assignments: Mapping[UUID, Sequence[int]], traces: Traces | None = None
    ) -> int:
        """Publish each account's messages as SendBatch commands; returns how many went out."""
        counts = await asyncio.gather(
            *(self._publish_account(a, ids, traces) for a, ids in assignments.items())
        )
        return sum(counts)

    async def publish_urgent(self, assignments: Mapping[UUID, Sequence[int]]) -> None:
        """Tell every sender replica which transactional messages each account should send next.

        Transient: a notice lost costs only time, the commands follow.
        """
        channel = await self._command_channel()
        for account_id, ids in assignments.items():
            body = UrgentSends(account_id=account_id, message_ids=list(ids)).model_dump_json()
            await channel.basic_publish(
                body.encode(),
                exchange=topology.URGENT.name,
                routing_key="",
                properties=_command_properties(),
            )

    async def commands_waiting(self, account_id: UUID) -> bool:
        """Whether the account's queue holds commands no sender has taken yet."""
        spec = topology.send_queue(account_id)
        channel = await self._command_channel()
        declared = await channel.queue_declare(spec.name, durable=True, arguments=spec.arguments)
        return bool(declared.message_count)

    async def publish_uncertain(self, message_ids: Sequence[int]) -> None:
        """Tell whoever listens that these messages may or may not have been delivered."""
        event = MessagesUncertain(message_ids=list(message_ids), found_at=datetime.now(UTC))
        await self._broker.publish(
            event,
            exchange=topology.EVENTS,
            routing_key=topology.MESSAGE_UNCERTAIN_KEY,
            persist=True,
        )
