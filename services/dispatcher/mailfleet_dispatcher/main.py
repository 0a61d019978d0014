"""Builds the dispatcher app; `run` is the console entry point and the only reader of env."""

import logging
from collections.abc import Sequence
from typing import cast

from faststream.asgi import AsgiFastStream
from faststream.asgi.types import ASGIApp
from faststream.rabbit import RabbitBroker
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
from mailfleet_common import tracing
from mailfleet_common.jsonlog import configure_logging
from mailfleet_common.ops import ops_routes
from mailfleet_common.serving import serve

from mailfleet_dispatcher import fleet
from mailfleet_dispatcher.handlers import create_router
from mailfleet_dispatcher.runtime import Runtime
from mailfleet_dispatcher.settings import Settings


def create_app(settings: Settings) -> AsgiFastStream:
    """The dispatcher: subscribers, assignment loop and sweeps, with /metrics, /health, /ready."""
    broker = RabbitBroker(
        settings.rabbit.url.get_secret_value(),
        reconnect_interval=settings.rabbit.reconnect_s,
        logger=logging.getLogger("mailfleet_dispatcher.broker"),
        middlewares=[RabbitTelemetryMiddleware()] if tracing.enabled() else (),
    )
    runtime = Runtime(settings, broker)
    broker.include_router(create_router(runtime))
    # ops_routes is typed with plain dicts for scope and messages; FastStream's ASGIApp uses
    # MutableMapping. Same callables at run time.
    routes = cast(
        "Sequence[tuple[str, ASGIApp]]",
        ops_routes([runtime.database_ready, runtime.broker_ready], fleet.COLLECTOR.exposition),
    )
    return AsgiFastStream(
        broker,
        asgi_routes=routes,
        logger=logging.getLogger("mailfleet_dispatcher.app"),
        on_startup=[runtime.start],
        after_startup=[runtime.start_loops],
        on_shutdown=[runtime.stop_loops],
        after_shutdown=[runtime.close],
    )


def run() -> None:
    """Serve the dispatcher until SIGTERM or SIGINT."""
    settings = Settings()
    configure_logging(settings.log_level, service="mailfleet-dispatcher")
    tracing.configure_tracing(settings.tracing, "mailfleet-dispatcher")
    serve(create_app(settings), settings.http, loop="uvloop", lifespan="on")
