"""What the API publishes on the bus."""

import logging
from uuid import UUID

from faststream.rabbit import RabbitBroker
from mailfleet_common import topology
from mailfleet_common.messages import RecipientsEnqueued

log = logging.getLogger(__name__)


async def announce_recipients(
    broker: RabbitBroker, campaign_id: UUID, count: int, transactional: bool = False
) -> bool:
    """Tell the dispatchers a campaign has queued messages; False if the broker refused.

    The messages are committed before this is called, and the dispatcher also polls every
    tick, so a lost announcement only delays delivery: it is logged, not raised.
    """
    try:
        await broker.publish(
            RecipientsEnqueued(campaign_id=campaign_id, count=count, transactional=transactional),
            exchange=topology.EVENTS,
            routing_key=topology.ENQUEUE_KEY,
            persist=True,
            # Unroutable (no dispatcher has declared its queue yet) is not an error here.
            mandatory=False,
            timeout=5,
        )
    except Exception:
        log.exception("could not publish RecipientsEnqueued", extra={"campaign": str(campaign_id)})
        return False
    return True
