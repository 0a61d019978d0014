"""Entry point: the sender app (replica plus /metrics, /health, /ready) served by uvicorn."""

import logging
from collections.abc import Sequence
from typing import cast

from faststream.asgi import AsgiFastStream
from faststream.asgi.types import ASGIApp
from faststream.rabbit import RabbitBroker
from mailfleet_common import tracing
from mailfleet_common.jsonlog import configure_logging
from mailfleet_common.ops import ops_routes
from mailfleet_common.publishing import BrokerPublisher
from mailfleet_common.serving import serve

from mailfleet_sender.replica import SenderReplica
from mailfleet_sender.settings import Settings
from mailfleet_sender.smtp import raise_open_file_limit
from mailfleet_sender.tracking import TrackingConfigError

log = logging.getLogger(__name__)


def create_app(settings: Settings, replica: SenderReplica | None = None) -> AsgiFastStream:
    """The sender: consumers start once the broker is up and stop before it closes.

    Raises TrackingConfigError when the tracking keys or base URL are missing or invalid.
    """
    # FastStream's own loggers go through the JSON handler too, not its coloured default.
    broker = RabbitBroker(
        settings.rabbit.url.get_secret_value(),
        reconnect_interval=settings.rabbit.reconnect_s,
        logger=logging.getLogger("mailfleet_sender.broker"),
    )
    sender = replica or SenderReplica(settings)

    async def start_sender() -> None:
        await sender.start(BrokerPublisher(broker))

    return AsgiFastStream(
        broker,
        # Same ASGI callables; the two libraries spell the scope type differently.
        asgi_routes=cast("Sequence[tuple[str, ASGIApp]]", ops_routes([sender.is_ready])),
        logger=logging.getLogger("mailfleet_sender.app"),
        after_startup=[start_sender],
        on_shutdown=[sender.stop],
    )


def run() -> None:
    """Console script: read the environment, log JSON, serve until SIGTERM."""
    settings = Settings()
    configure_logging(settings.log_level, service="mailfleet-sender")
    tracing.configure_tracing(settings.tracing, "mailfleet-sender")
    # One SMTP session per account: let the session budget use all the process may open.
    raise_open_file_limit()
    try:
        app = create_app(settings)
    except TrackingConfigError as exc:
        log.critical("sender not started: %s", exc)
        raise SystemExit(2) from None
    serve(app, settings.http, loop="uvloop", lifespan="on")
