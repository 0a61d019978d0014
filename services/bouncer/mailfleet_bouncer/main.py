"""Entry point: the bouncer replica plus /metrics, /health and /ready, served by uvicorn."""

import logging
from collections.abc import Sequence
from typing import cast

from faststream.asgi import AsgiFastStream
from faststream.asgi.types import ASGIApp
from faststream.rabbit import RabbitBroker
from mailfleet_common import topology
from mailfleet_common.crypto import SecretBoxError
from mailfleet_common.jsonlog import configure_logging
from mailfleet_common.ops import ops_routes
from mailfleet_common.publishing import BrokerPublisher
from mailfleet_common.serving import serve
from mailfleet_common.tracking import InvalidTrackingKeysError

from mailfleet_bouncer.replica import BouncerReplica
from mailfleet_bouncer.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, replica: BouncerReplica | None = None) -> AsgiFastStream:
    """The bouncer: it starts reading once the broker is up and stops before it closes.

    Raises InvalidTrackingKeysError without tracking keys (mailto unsubscribes and returned
    List-Unsubscribe headers carry signed tokens) and SecretBoxError without crypto keys (the
    IMAP passwords are encrypted).
    """
    broker = RabbitBroker(
        settings.rabbit.url.get_secret_value(),
        reconnect_interval=settings.rabbit.reconnect_s,
        logger=logging.getLogger("mailfleet_bouncer.broker"),
    )
    bouncer = replica or BouncerReplica(settings)

    async def start_bouncer() -> None:
        await broker.declare_exchange(topology.EVENTS)
        await bouncer.start(BrokerPublisher(broker))

    return AsgiFastStream(
        broker,
        asgi_routes=cast("Sequence[tuple[str, ASGIApp]]", ops_routes([bouncer.is_ready])),
        logger=logging.getLogger("mailfleet_bouncer.app"),
        after_startup=[start_bouncer],
        on_shutdown=[bouncer.stop],
    )


def run() -> None:
    """Console script: read the environment, log JSON, serve until SIGTERM."""
    settings = Settings()
    configure_logging(settings.log_level, service="mailfleet-bouncer")
    try:
        app = create_app(settings)
    except (InvalidTrackingKeysError, SecretBoxError) as exc:
        log.critical("bouncer not started: %s", exc)
        raise SystemExit(2) from None
    serve(app, settings.http, loop="uvloop", lifespan="on")
