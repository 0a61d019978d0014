"""RabbitMQ exchanges, queues and routing keys: the wiring every producer and consumer shares.

- ``mailfleet.events`` (topic): domain events, routed by their name (``enqueue``, ``opened``,
  ``send-attempt``, ``account-paused``, ...).
- ``mailfleet.send`` (direct): send commands, routed by account id to that account's own
  durable queue ``mailfleet.send.<account id>``. Those queues have single-active-consumer
  set, so exactly one sender replica delivers for an account at any moment.
- ``mailfleet.urgent`` (fanout): transactional messages just assigned (UrgentSends), to a
  transient queue of every sender replica; the replica busy with the account sends them
  before the campaign commands it holds.
- ``mailfleet.dead`` (fanout) -> ``mailfleet.dead-letter``: what a consumer rejected.
"""

from uuid import UUID

from faststream.rabbit import ExchangeType, RabbitExchange, RabbitQueue
from faststream.rabbit.schemas.queue import ClassicQueueArgs

EVENTS = RabbitExchange("mailfleet.events", type=ExchangeType.TOPIC, durable=True)
SEND = RabbitExchange("mailfleet.send", type=ExchangeType.DIRECT, durable=True)
DEAD = RabbitExchange("mailfleet.dead", type=ExchangeType.FANOUT, durable=True)
URGENT = RabbitExchange("mailfleet.urgent", type=ExchangeType.FANOUT, durable=True)

DEAD_LETTER_QUEUE = RabbitQueue("mailfleet.dead-letter", durable=True)

ENQUEUE_KEY = "enqueue"
SEND_ATTEMPT_KEY = "send-attempt"
ACCOUNT_PAUSED_KEY = "account-paused"
MESSAGE_UNCERTAIN_KEY = "message-uncertain"
OPENED_KEY = "opened"
CLICKED_KEY = "clicked"
UNSUBSCRIBED_KEY = "unsubscribed"
TRACKING_KEYS = (OPENED_KEY, CLICKED_KEY, UNSUBSCRIBED_KEY)
# What the bouncer read from the accounts' mailboxes (messages.Feedback), routed by its kind.
# An unsubscribe by mail goes out as "mail-unsubscribed": "unsubscribed" carries the tracker's
# TrackingHits, which the dispatcher's queue for it expects.
FEEDBACK_KEYS = {
    "bounced": "bounced",
    "complained": "complained",
    "replied": "replied",
    "auto-replied": "auto-replied",
    "unsubscribed": "mail-unsubscribed",
}


def _dead_lettered() -> ClassicQueueArgs:
    return {"x-dead-letter-exchange": DEAD.name}


def event_queue(name: str, routing_key: str) -> RabbitQueue:
    """A durable, dead-lettered queue of one consumer group for one event type."""
    return RabbitQueue(name, durable=True, routing_key=routing_key, arguments=_dead_lettered())


def send_queue_name(account_id: UUID) -> str:
    return f"mailfleet.send.{account_id}"


def send_queue(account_id: UUID) -> RabbitQueue:
    """The account's own command queue; one active consumer at a time across all replicas."""
    return RabbitQueue(
        send_queue_name(account_id),
        durable=True,
        routing_key=str(account_id),
        arguments={**_dead_lettered(), "x-single-active-consumer": True},
    )


ENQUEUE_QUEUE = event_queue("mailfleet.dispatcher.enqueue", ENQUEUE_KEY)
SEND_ATTEMPT_QUEUE = event_queue("mailfleet.dispatcher.send-attempt", SEND_ATTEMPT_KEY)
ACCOUNT_PAUSED_QUEUE = event_queue("mailfleet.dispatcher.account-paused", ACCOUNT_PAUSED_KEY)
# One queue per tracking event type; the dispatcher records all three the same way.
TRACKING_QUEUES = {key: event_queue(f"mailfleet.dispatcher.{key}", key) for key in TRACKING_KEYS}
