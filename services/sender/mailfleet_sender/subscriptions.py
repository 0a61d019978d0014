"""This replica's consumer on each account's queue, multiplexed over a few shared channels.

RabbitMQ 3.10 makes the first registered consumer of a single-active-consumer queue the
active one and ignores consumer priorities, so a replica hands an account over by cancelling
its consumer and registering again: that moves it to the back of the line.

A connection has at most 2,047 channels (RabbitMQ's channel_max), so accounts share them, at
most `per_channel` consumers on each; `basic.qos` without `global` limits each consumer on
its own. Consumers are registered without aio-pika's own restore: when a channel closes (an
error on it, or the connection), aio-pika reopens it and every account it carried declares
its queue again (it may have been deleted) and consumes again. The broker has requeued every
command left unacknowledged on the closed channel, so the command in hand stops after its
message in hand and commands waiting in an inbox are dropped, not worked twice.

An account holds no task while it has nothing to do: one is started when a command arrives
(or a transactional message is noticed while this replica is its active consumer) and ends
when its inbox is empty.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import cast

import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from mailfleet_common import topology

from mailfleet_sender.delivery import Account
from mailfleet_sender.metrics import CHANNELS, CONSUMER_RESTORES, HANDOVERS, HANDOVERS_PENDING

log = logging.getLogger(__name__)

BatchHandler = Callable[[Account, AbstractIncomingMessage, asyncio.Event], Awaitable[None]]
UrgentHandler = Callable[[Account, asyncio.Event], Awaitable[None]]

# A channel that closes again soon after its consumers were restored (a queue that can no
# longer be declared as configured, say) is restored ever more slowly, not in a tight loop.
_RESTORE_SETTLE_S = 5.0
_RESTORE_DELAY_MIN_S = 0.5
_RESTORE_DELAY_MAX_S = 30.0


class SharedChannel:
    """One channel and the account consumers on it."""

    def __init__(self, channel: AbstractRobustChannel) -> None:
        self.channel = channel
        self.members: set[AccountSubscription] = set()
        self._restoring: asyncio.Task[None] | None = None
        self._closing = False
        self._restored_at = -_RESTORE_SETTLE_S
        self._delay = 0.0
        self._resuming: set[asyncio.Task[None]] = set()

    @property
    def settled(self) -> bool:
        """Open, and not waiting to restore its consumers."""
        restoring = self._restoring is not None and not self._restoring.done()
        return not restoring and not self.channel.is_closed

    async def watch(self) -> None:
        """Follow the channel: interrupt its consumers when it closes, restore them after."""
        self.channel.close_callbacks.add(self._on_close)
        self.channel.reopen_callbacks.add(self._on_reopen)
        await self._watch_cancels()

    async def _watch_cancels(self) -> None:
        underlay = await self.channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_cancel)

    def _on_close(self, _: object, exc: BaseException | None) -> None:
        if not self._closing:
            log.warning("consumer channel closed", extra={"error": repr(exc)})
        for member in self.members:
            member.interrupt()

    def _on_reopen(self, _: object) -> None:
        # Not awaited: aio-pika restores a connection's channels one after the other, and
        # each channel's consumers can come back in parallel with the others'.
        if self._restoring is None or self._restoring.done():
            self._restoring = asyncio.create_task(self._restore(), name="consumer-restore")

    async def _restore(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._restored_at < _RESTORE_SETTLE_S:
            self._delay = min(_RESTORE_DELAY_MAX_S, max(2 * self._delay, _RESTORE_DELAY_MIN_S))
            await asyncio.sleep(self._delay)
        else:
            self._delay = 0.0
        await self._watch_cancels()
        members = [m for m in self.members if not m.consuming]
        for member in members:
            await member.resume()
        self._restored_at = loop.time()
        log.info("consumers restored", extra={"count": len(members)})

    def _on_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        # The broker cancelled a consumer: its queue was deleted (or its node went away).
        for member in self.members:
            if member.consumer_tag == frame.consumer_tag:
                member.interrupt()
                task = asyncio.create_task(member.resume(), name="consumer-restore")
                self._resuming.add(task)
                task.add_done_callback(self._resuming.discard)

    async def close(self) -> None:
        self._closing = True
        if self._restoring is not None:
            self._restoring.cancel()
        try:
            await self.channel.close()
        except Exception as exc:
            log.debug("channel close failed", extra={"error": repr(exc)})


class ConsumerChannels:
    """The channels every account consumer of this replica shares."""

    def __init__(
        self, connection: AbstractRobustConnection, per_channel: int, prefetch: int
    ) -> None:
        self._connection = connection
        self._per_channel = per_channel
        self._prefetch = prefetch
        self._channels: list[SharedChannel] = []
        self._opening = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._channels)

    @property
    def members(self) -> list[int]:
        """How many consumers each channel carries."""
        return [len(shared.members) for shared in self._channels]

    async def reserve(self, count: int) -> None:
        """Open channels so that `count` more consumers fit, spread over enough of them."""
        async with self._opening:
            members = sum(len(shared.members) for shared in self._channels)
            while len(self._channels) * self._per_channel < members + count:
                await self._open()

    async def place(self, subscription: "AccountSubscription") -> SharedChannel:
        """The least used channel with room, opening one if every channel is full."""
        async with self._opening:
            shared = min(self._channels, key=lambda s: len(s.members), default=None)
            if shared is None or len(shared.members) >= self._per_channel:
                shared = await self._open()
            shared.members.add(subscription)
            return shared

    def release(self, subscription: "AccountSubscription", shared: SharedChannel) -> None:
        shared.members.discard(subscription)

    async def close(self) -> None:
        channels, self._channels = self._channels, []
        await asyncio.gather(*(shared.close() for shared in channels))
        CHANNELS.set(0)

    async def _open(self) -> SharedChannel:
        channel = await self._connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self._prefetch)
        shared = SharedChannel(channel)
        await shared.watch()
        self._channels.append(shared)
        CHANNELS.set(len(self._channels))
        return shared


class AccountSubscription:
    """Consumes one account's send queue and works its commands one at a time."""

    def __init__(
        self,
        account: Account,
        handle: BatchHandler,
        channels: ConsumerChannels,
        owned_elsewhere: Callable[[], bool],
        send_urgent: UrgentHandler,
    ) -> None:
        self.account = account
        self._handle = handle
        self._send_urgent = send_urgent
        self._channels = channels
        self._owned_elsewhere = owned_elsewhere
        self._inbox: deque[AbstractIncomingMessage] = deque()
        self._stopping = False
        # Set when the command in hand must stop after its message in hand: shutdown, the
        # channel closed, or the broker cancelled the consumer.
        self._interrupted = asyncio.Event()
        self._cycle = False
        self._tag: str | None = None
        # The broker delivered to the consumer `_tag`: it is the queue's single active
        # consumer, and stays so until it is cancelled or its channel closes.
        self._active = False
        # Became active with notices parked meanwhile: they are checked and sent first.
        self._adopting = False
        self._shared: SharedChannel | None = None
        self._queue: AbstractRobustQueue | None = None
        self._task: asyncio.Task[None] | None = None
        self._resuming = asyncio.Lock()
        self.idle_since = asyncio.get_running_loop().time()

    @property
    def consuming(self) -> bool:
        return self._tag is not None

    @property
    def consumer_tag(self) -> str | None:
        return self._tag

    @property
    def restorable(self) -> bool:
        """Not consuming, on a channel that is not restoring its consumers by itself."""
        return self._tag is None and self._shared is not None and self._shared.settled

    @property
    def channel(self) -> AbstractRobustChannel | None:
        """The shared channel the consumer is on."""
        return None if self._shared is None else self._shared.channel

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def serving(self) -> bool:
        """The account's active consumer: it alone sends for the account, busy or idle."""
        return self._tag is not None and self._active

    def notice(self, message_ids: list[int]) -> None:
        """Transactional messages just assigned to the account: send them before the rest.

        The active consumer sends them before the next message of its command in hand, or
        at once if it is idle. Another replica keeps them for a while (parked): it may be
        the next in line, taking over before their commands, behind the look-ahead, reach it.
        """
        self.account.urgent.add(message_ids, ready=self.serving)
        if self.serving:
            self._wake()

    @property
    def _urgent_due(self) -> bool:
        return self.serving and (self._adopting or bool(self.account.urgent))

    async def start(self) -> None:
        """Take a place on a shared channel, declare and bind the queue, consume."""
        self._shared = await self._channels.place(self)
        await self._consume(self._shared)

    async def resume(self) -> None:
        """Consume again after the channel closed or the broker cancelled the consumer."""
        async with self._resuming:
            if self._stopping or self._tag is not None or self._shared is None:
                return
            self._interrupted = asyncio.Event()
            self._drop_stale()
            try:
                await self._consume(self._shared)
                CONSUMER_RESTORES.inc()
            except Exception as exc:
                # The channel closed again; its reopening brings us back, or the next
                # account poll does.
                log.warning(
                    "account consumer not restored",
                    extra={"account_id": str(self.account.id), "error": repr(exc)},
                )

    async def _consume(self, shared: SharedChannel) -> None:
        spec = topology.send_queue(self.account.id)
        underlay = await shared.channel.get_underlay_channel()
        # Declared and bound without waiting for the replies: the broker handles a channel's
        # methods in order, so the consume is answered after both, and a failure of either
        # closes the channel (and fails the consume). One round trip per account, not three.
        await underlay.queue_declare(spec.name, durable=True, arguments=spec.arguments, nowait=True)
        await underlay.queue_bind(
            spec.name, topology.SEND.name, routing_key=spec.routing_key, nowait=True
        )
        queue = cast(AbstractRobustQueue, await shared.channel.get_queue(spec.name, ensure=False))
        self._tag = await queue.consume(self._on_delivery, robust=False)
        self._queue = queue

    def interrupt(self) -> None:
        """The consumer is gone (channel closed or cancelled by the broker)."""
        self._tag = None
        self._inactive()
        self._interrupted.set()

    def _inactive(self) -> None:
        self._active = self._adopting = False
        self.account.urgent.park()

    def request_cycle(self) -> None:
        """Move to the back of the consumer line once the command in hand is done."""
        self._want_cycle()
        self._wake()

    def _want_cycle(self) -> None:
        if not self._cycle:
            self._cycle = True
            HANDOVERS_PENDING.inc()

    def close_idle_sessions(self, idle_s: float) -> None:
        """Close the account's SMTP sessions when it has had nothing to send for `idle_s`."""
        if self.busy or asyncio.get_running_loop().time() - self.idle_since < idle_s:
            return
        for connection in self.account.transport.connections:
            connection.close()

    async def stop(self, cancel: bool = True) -> None:
        """Stop consuming, finish the message in hand, requeue every command not done.

        Without `cancel` the consumer stays registered until its channel is closed (a
        replica shutting down closes every channel after stopping every account, and the
        broker requeues whatever they still hold): no round trip per account.
        """
        self._stopping = True
        self._interrupted.set()
        if self._cycle:
            self._cycle = False
            HANDOVERS_PENDING.dec()
        async with self._resuming:
            if cancel:
                await self._cancel_consumer()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self._requeue_inbox()
        self.account.transport.close()
        if self._shared is not None:
            self._channels.release(self, self._shared)
            self._shared = None
        self._queue = None

    async def _on_delivery(self, message: AbstractIncomingMessage) -> None:
        if not self._active and message.consumer_tag == self._tag:
            self._active = self._adopting = True
        self._inbox.append(message)
        self._wake()

    def _wake(self) -> None:
        if not self.busy and not self._stopping:
            self._task = asyncio.create_task(self._run(), name=f"account-{self.account.id}")

    async def _run(self) -> None:
        try:
            while not self._stopping and (self._inbox or self._cycle or self._urgent_due):
                if self._urgent_due:
                    await self._urgent()
                if self._inbox:
                    await self._work(self._inbox.popleft())
                if self._cycle and not self._stopping:
                    # Noticed messages go out before the account passes to another replica.
                    if self._urgent_due:
                        await self._urgent()
                    await self._recycle()
        finally:
            self.idle_since = asyncio.get_running_loop().time()

    async def _urgent(self) -> None:
        self._adopting = False
        try:
            await self._send_urgent(self.account, self._interrupted)
        except Exception:
            # Their commands follow on the queue: a failure here only costs time. Parked,
            # they are not tried again until the account's next activation.
            self.account.urgent.park()
            log.exception("noticed messages not sent", extra={"account_id": str(self.account.id)})
        finally:
            self.account.free_at = datetime.now(UTC)

    async def _work(self, message: AbstractIncomingMessage) -> None:
        if message.consumer_tag != self._tag or _on_closed_channel(message):
            # From a consumer that is gone: the broker requeued it when the channel closed,
            # or it comes back to the queue now.
            await _requeue(message)
            return
        try:
            await self._handle(self.account, message, self._interrupted)
        finally:
            self.account.free_at = datetime.now(UTC)
        if self._owned_elsewhere() and not self._stopping:
            # We were the active consumer of an account another live replica owns.
            self._want_cycle()

    async def _recycle(self) -> None:
        self._cycle = False
        HANDOVERS_PENDING.dec()
        HANDOVERS.inc()
        # Under the lock: a restore in between would register a second consumer.
        async with self._resuming:
            await self._cancel_consumer()
            await self._requeue_inbox()
            if self._queue is not None and not self._stopping:
                try:
                    self._tag = await self._queue.consume(self._on_delivery, robust=False)
                except Exception as exc:
                    log.warning(
                        "account consumer not registered again",
                        extra={"account_id": str(self.account.id), "error": repr(exc)},
                    )

    async def _cancel_consumer(self) -> None:
        tag, self._tag = self._tag, None
        self._inactive()
        if tag is not None and self._queue is not None:
            try:
                await self._queue.cancel(tag)
            except Exception as exc:
                log.warning("consumer cancel failed", extra={"error": repr(exc)})

    def _drop_stale(self) -> None:
        # Commands delivered on a channel that closed: the broker has them back already.
        self._inbox = deque(m for m in self._inbox if not _on_closed_channel(m))

    async def _requeue_inbox(self) -> None:
        while self._inbox:
            await _requeue(self._inbox.popleft())


def _on_closed_channel(message: AbstractIncomingMessage) -> bool:
    # aio-pika raises instead of answering once the channel is closed.
    try:
        return message.channel.is_closed
    except aiormq.exceptions.ChannelInvalidStateError:
        return True


async def _requeue(message: AbstractIncomingMessage) -> None:
    if _on_closed_channel(message):
        return  # the broker requeued it when its channel closed
    try:
        await message.nack(requeue=True)
    except Exception as exc:
        log.debug("requeue failed", extra={"error": repr(exc)})
