"""Publishing domain events on the bus, as the worker services do."""

from faststream.rabbit import RabbitBroker
from pydantic import BaseModel

from mailfleet_common import topology


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
