"""Builds the tracker app; `run` is the console entry point and the only reader of env."""

import logging
import sys
from typing import Any

from mailfleet_common import tracing
from mailfleet_common.jsonlog import configure_logging
from mailfleet_common.serving import serve
from mailfleet_common.tracking import InvalidTrackingKeysError, TokenSigner, parse_keys

from mailfleet_tracker.app import TrackerApp, route_of
from mailfleet_tracker.runtime import Runtime
from mailfleet_tracker.settings import Settings

log = logging.getLogger(__name__)

# How uvicorn serves the tracker (bench.bare, its benchmark baseline, uses the same).
# httptools: uvicorn's C HTTP parser (a dependency, so always there). proxy_headers off: uvicorn
# would otherwise take X-Forwarded-For from loopback peers by itself, where
# trust_forwarded_for should decide, and its middleware costs every request. No Server header:
# one less to write per pixel, and nothing to tell a scanner.
UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "interface": "asgi3",
    "proxy_headers": False,
    "server_header": False,
}


def create_app(settings: Settings) -> TrackerApp:
    """The tracker as a raw ASGI app; its lifespan opens the pool and starts the publisher.

    Raises InvalidTrackingKeysError at once if MAILFLEET_TRACKING__KEYS is missing or holds
    a key too short: without keys no token verifies, and every link would be a 404.
    """
    signer = TokenSigner(parse_keys(settings.tracking.keys.get_secret_value()))
    return TrackerApp(settings.tracker, signer, Runtime(settings))


def run() -> None:
    """Serve the tracker until SIGTERM or SIGINT."""
    settings = Settings()
    configure_logging(settings.log_level, service="mailfleet-tracker")
    tracing.configure_tracing(settings.tracing, "mailfleet-tracker")
    try:
        app = create_app(settings)
    except InvalidTrackingKeysError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(2)
    if tracing.enabled():
        traced = tracing.TracingMiddleware(app, "mailfleet-tracker", route_of)
        serve(traced, settings.http, lifespan="on", **UVICORN_OPTIONS)
    else:
        serve(app, settings.http, lifespan="on", **UVICORN_OPTIONS)
