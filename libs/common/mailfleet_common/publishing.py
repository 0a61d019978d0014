"""Publishing domain events on the bus, as the worker services do."""

from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from faststream.rabbit import RabbitBroker
from pydantic import BaseModel

from mailfleet_common import topology

# What RabbitMQ restarting or a cut connection looks like to a publisher: a closed channel,
# a refused connection, a publish the broker nacked while it went down.
BROKER_AWAY: tuple[type[BaseException], ...] = (
    AMQPError,
    ChannelInvalidStateError,
    ConnectionError,
)


class BrokerPublisher:
    """Publishes persistent events to ``mailfleet.events`` through a FastStream broker.

    The broker publishes with confirms: an awaited publish has been taken by RabbitMQ.
    """

    def __init__(self, broker: RabbitBroker) -> None:
        self._broker = broker

    async def publish_event(self, event: BaseModel, routing_key: str) -> None:
        await self._broker.publish(
            event, exchange=topology.EVENTS, routing_key=routing_key, persist=True
        )
