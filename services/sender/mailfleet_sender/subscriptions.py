"""This replica's consumer on each account's queue, and the loop that works its commands.

RabbitMQ 3.10 makes the first registered consumer of a single-active-consumer queue the
active one and ignores consumer priorities, so a replica hands an account over by cancelling
its consumer and registering again: that moves it to the back of the line.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from mailfleet_common import topology

from mailfleet_sender.delivery import Account

log = logging.getLogger(__name__)

BatchHandler = Callable[[Account, AbstractIncomingMessage, asyncio.Event], Awaitable[None]]


class AccountSubscription:
    """Consumes one account's send queue and works its commands one at a time."""

    def __init__(
        self,
        account: Account,
        handle: BatchHandler,
        prefetch: int,
        owned_elsewhere: Callable[[], bool],
    ) -> None:
        self.account = account
        self._handle = handle
        self._prefetch = prefetch
        self._owned_elsewhere = owned_elsewhere
        self._inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._cycle = False
        self._busy = False
        self._tag: str | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def broken(self) -> bool:
        """The working loop died (its channel failed): the subscription must be replaced."""
        return self._task is not None and self._task.done() and not self._stopping.is_set()

    async def start(self, connection: AbstractRobustConnection) -> None:
        self._channel = await connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self._prefetch)
        spec = topology.send_queue(self.account.id)
        self._queue = await self._channel.declare_queue(
            spec.name, durable=True, arguments=spec.arguments
        )
        await self._queue.bind(topology.SEND.name, routing_key=spec.routing_key)
        self._tag = await self._queue.consume(self._on_delivery)
        self._task = asyncio.create_task(self._run(), name=f"account-{self.account.id}")

    def request_cycle(self) -> None:
        """Move to the back of the consumer line once the command in hand is done."""
        self._cycle = True
        if not self._busy:
            self._inbox.put_nowait(None)

    async def stop(self) -> None:
        """Stop consuming, finish the message in hand, requeue every command not done."""
        self._stopping.set()
        await self._cancel_consumer()
        self._inbox.put_nowait(None)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self._requeue_inbox()
        self.account.transport.close()
        if self._channel is not None:
            try:
                await self._channel.close()
            except Exception as exc:
                log.debug("channel close failed", extra={"error": repr(exc)})

    async def _on_delivery(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            message = await self._inbox.get()
            if message is not None:
                if self._stopping.is_set() or message.consumer_tag != self._tag:
                    await _requeue(message)
                    continue
                self._busy = True
                try:
                    await self._handle(self.account, message, self._stopping)
                finally:
                    self._busy = False
                if self._owned_elsewhere():
                    # We were the active consumer of an account another live replica owns.
                    self._cycle = True
            if self._cycle and not self._stopping.is_set():
                await self._recycle()

    async def _recycle(self) -> None:
        self._cycle = False
        await self._cancel_consumer()
        await self._requeue_inbox()
        if self._queue is not None and not self._stopping.is_set():
            self._tag = await self._queue.consume(self._on_delivery)

    async def _cancel_consumer(self) -> None:
        tag, self._tag = self._tag, None
        if tag is not None and self._queue is not None:
            try:
                await self._queue.cancel(tag)
            except Exception as exc:
                log.warning("consumer cancel failed", extra={"error": repr(exc)})

    async def _requeue_inbox(self) -> None:
        while not self._inbox.empty():
            message = self._inbox.get_nowait()
            if message is not None:
                await _requeue(message)


async def _requeue(message: AbstractIncomingMessage) -> None:
    try:
        await message.nack(requeue=True)
    except Exception as exc:
        log.debug("requeue failed", extra={"error": repr(exc)})
