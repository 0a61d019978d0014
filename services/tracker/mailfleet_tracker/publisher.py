"""The hit buffer and its publisher: hits wait in memory until RabbitMQ confirms them in batches.

A request only appends a tuple to a list; a background task turns what has gathered into one
TrackingHits message per kind, publishes it with a confirm, and only then drops those hits.
While the broker is away requests go on being answered and hits gather, up to a bound; once
it is back, everything buffered is delivered. A hit whose confirm was lost is published again,
and its key (instance id and sequence number) lets the consumer record it once.
"""

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from mailfleet_common import topology, tracing
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind

from mailfleet_tracker import metrics
from mailfleet_tracker.metrics import KINDS

log = logging.getLogger(__name__)
_tracer = tracing.get_tracer("mailfleet_tracker")

# (sequence number, message id, occurred at in Unix seconds, ip, user agent, url, machine reason,
# traceparent of the request when tracing is on)
Hit = tuple[int, int, float, str | None, str | None, str | None, str | None, str | None]

_DROP_LOG_INTERVAL_S = 10.0
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0


class HitBuffer:
    """Hits by kind, oldest first, at most `capacity` in all."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._hits: dict[str, list[Hit]] = {kind: [] for kind in KINDS}
        self._size = 0
        self._sequence = itertools.count(1)
        self._wakeup = asyncio.Event()
        self._dropped_unlogged = 0
        self._drop_logged_at = -_DROP_LOG_INTERVAL_S
        metrics.BUFFERED.set_function(lambda: self._size)

    def __len__(self) -> int:
        return self._size

    def add(
        self,
        kind: str,
        message_id: int,
        occurred_at: float,
        ip: str | None,
        user_agent: str | None,
        url: str | None,
        machine_reason: str | None,
        traceparent: str | None = None,
    ) -> bool:
        """Buffer one hit; False if the buffer is full and the hit was dropped."""
        if self._size >= self.capacity:
            self._drop()
            return False
        self._hits[kind].append(
            (
                next(self._sequence),
                message_id,
                occurred_at,
                ip,
                user_agent,
                url,
                machine_reason,
                traceparent,
            )
        )
        self._size += 1
        metrics.HITS[kind].inc()
        self._wakeup.set()
        return True

    def _drop(self) -> None:
        metrics.DROPPED.inc()
        self._dropped_unlogged += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= _DROP_LOG_INTERVAL_S:
            log.error(
                "hit buffer full, dropping hits until the broker takes them",
                extra={"dropped": self._dropped_unlogged, "capacity": self.capacity},
            )
            self._dropped_unlogged = 0
            self._drop_logged_at = now

    def peek(self, kind: str, limit: int) -> list[Hit]:
        """The oldest hits of a kind, left in the buffer."""
        return self._hits[kind][:limit]

    def discard(self, kind: str, count: int) -> None:
        """Drop the oldest `count` hits of a kind, once the broker has them."""
        del self._hits[kind][:count]
        self._size -= count

    async def wait(self) -> None:
        """Return once something is buffered, or `wake` was called."""
        self._wakeup.clear()
        if not self._size:
            await self._wakeup.wait()

    def wake(self) -> None:
        self._wakeup.set()


# The C string escaper json.dumps uses; its output is a quoted JSON string.
_quote = json.encoder.encode_basestring_ascii


@lru_cache(maxsize=4096)
def _quote_repeated(value: str) -> str:
    """Quote a value that recurs across hits: user agents, link targets, machine reasons."""
    return _quote(value)


@lru_cache(maxsize=64)
def _utc_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _utc_iso(timestamp: float) -> str:
    second = int(timestamp)
    return f"{_utc_second(second)}.{int((timestamp - second) * 1e6):06d}+00:00"


_TRACEPARENT = '"traceparent":'


def encode_hits(kind: str, hits: Sequence[Hit], instance_id: str) -> bytes:
    """A TrackingHits message as JSON, written field by field.

    Several times cheaper than json.dumps of a dict per hit, and it runs on the event loop
    that answers requests: a batch of 1000 costs a millisecond or two, not ten.
    """
    parts = [
        f'{{"key":"{instance_id}-{seq}","message_id":{message_id},'
        f'"occurred_at":"{_utc_iso(occurred_at)}",'
        f'"ip":{"null" if ip is None else _quote(ip)},'
        f'"user_agent":{"null" if user_agent is None else _quote_repeated(user_agent)},'
        f'"url":{"null" if url is None else _quote_repeated(url)},'
        f'"machine":{"false" if reason is None else "true"},'
        f'"machine_reason":{"null" if reason is None else _quote_repeated(reason)}'
        f"{'' if traceparent is None else f',{_TRACEPARENT}{_quote(traceparent)}'}}}"
        for seq, message_id, occurred_at, ip, user_agent, url, reason, traceparent in hits
    ]
    return f'{{"kind":"{kind}","hits":[{",".join(parts)}]}}'.encode()


class EventSink(Protocol):
    """Where batches go: publish returns only once the broker has confirmed the message."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def publish(
        self, routing_key: str, body: bytes, headers: dict[str, Any] | None = None
    ) -> None: ...

    async def close(self) -> None: ...


class RabbitEvents:
    """The events exchange over one robust connection, on a channel with publisher confirms.

    Messages are not mandatory: the dispatcher's durable queues are bound before any message
    is sent (it assigns them), so an unroutable hit means no consumer exists to record it.
    """

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and connection.connected.is_set()

    async def connect(self) -> None:
        """Connect and declare the exchange, unless done already.

        Only the first connection is made here; after that aio-pika reconnects by itself and
        restores the channel, and publishes fail fast until it has.
        """
        if self._exchange is not None:
            if self._connection is None or not self._connection.is_closed:
                return
            await self.close()  # closed for good, not reconnecting: start over
        connection = await aio_pika.connect_robust(
            self._url, timeout=self._timeout_s, reconnect_interval=1
        )
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                topology.EVENTS.name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except BaseException:
            await connection.close()
            raise
        self._connection, self._exchange = connection, exchange

    async def publish(
        self, routing_key: str, body: bytes, headers: dict[str, Any] | None = None
    ) -> None:
        await self.connect()
        assert self._exchange is not None  # noqa: S101 - connect() sets it or raises
        message = aio_pika.Message(
            body,
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        async with asyncio.timeout(self._timeout_s):
            await self._exchange.publish(message, routing_key, mandatory=False)

    async def close(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            await connection.close()


class Publisher:
    """Drains the buffer into the broker in batches, retrying with backoff until it can."""

    def __init__(
        self,
        buffer: HitBuffer,
        events: EventSink,
        batch_max: int,
        linger_s: float,
        instance_id: str | None = None,
    ) -> None:
        self._buffer = buffer
        self._events = events
        self._batch_max = batch_max
        self._linger_s = linger_s
        # Random per process start: keys stay unique across restarts and replicas.
        self.instance_id = instance_id or secrets.token_hex(8)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        metrics.BROKER_CONNECTED.set_function(lambda: float(self._events.connected))

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="hit-publisher")

    async def close(self, timeout_s: float) -> None:
        """Publish what is buffered (giving up after the timeout), then disconnect."""
        self._stopping.set()
        self._buffer.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                log.error("hits left unpublished at shutdown", extra={"count": len(self._buffer)})
            self._task = None
        await self._events.close()

    async def _run(self) -> None:
        try:
            await self._events.connect()
        except Exception as exc:
            # Not fatal: hits are buffered, and publishing retries the connection.
            log.warning("broker unreachable, buffering hits", extra={"error": repr(exc)})
        failures = 0
        while True:
            if not len(self._buffer):
                if self._stopping.is_set():
                    return
                await self._buffer.wait()
                continue
            if len(self._buffer) < self._batch_max:
                await self._linger()
            try:
                await self._publish_round()
            except Exception as exc:
                failures += 1
                metrics.PUBLISH_FAILURES.inc()
                log.warning(
                    "publishing hits failed, will retry",
                    extra={"error": repr(exc), "buffered": len(self._buffer), "attempt": failures},
                )
                await asyncio.sleep(min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** (failures - 1)))
                continue
            if failures:
                log.info("publishing hits again", extra={"buffered": len(self._buffer)})
                failures = 0

    async def _linger(self) -> None:
        """Wait a little for more hits: a bus message costs about as much as hundreds of hits.

        A shutdown cuts the wait short.
        """
        if self._linger_s and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._linger_s):
                    await self._stopping.wait()

    async def _publish_round(self) -> None:
        """One batch of each kind that has hits, so no kind waits behind another.

        The kind whose oldest hit came first goes first: a click and then an open reach the
        bus in that order (though consumers of separate queues may still record them in any).
        """
        batches = [(kind, self._buffer.peek(kind, self._batch_max)) for kind in KINDS]
        for kind, batch in sorted((b for b in batches if b[1]), key=lambda b: b[1][0][0]):
            body = encode_hits(kind, batch, self.instance_id)
            if tracing.enabled() and any(hit[7] for hit in batch):
                await self._publish_traced(kind, batch, body)
            else:
                await self._events.publish(kind, body)
            # Only now: a batch whose confirm never came stays and is published again.
            self._buffer.discard(kind, len(batch))
            metrics.PUBLISHED[kind].inc(len(batch))

    async def _publish_traced(self, kind: str, batch: Sequence[Hit], body: bytes) -> None:
        """Publish a batch holding traced hits in a PRODUCER span, its context in the headers.

        The span continues the first traced hit's trace and links the others; the recorder
        continues each hit's own trace from the ``traceparent`` in its body.
        """
        parents = [tracing.context_from(hit[7]) for hit in batch if hit[7]]
        links = [Link(span_context) for ctx in parents[1:] if (span_context := _span_of(ctx))]
        with _tracer.start_as_current_span(
            f"{topology.EVENTS.name} publish",
            context=parents[0],
            kind=SpanKind.PRODUCER,
            links=links,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "publish",
                "messaging.destination.name": topology.EVENTS.name,
                "messaging.rabbitmq.destination.routing_key": kind,
                "messaging.batch.message_count": len(batch),
            },
        ):
            headers: dict[str, Any] = {}
            tracing.inject(headers)
            await self._events.publish(kind, body, headers)


def _span_of(ctx: Context) -> SpanContext | None:
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None
