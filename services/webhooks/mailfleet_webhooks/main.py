"""Entry point: the webhook worker plus /metrics, /health and /ready, served by uvicorn."""

import logging
from typing import Any

from mailfleet_common.crypto import SecretBoxError
from mailfleet_common.jsonlog import configure_logging
from mailfleet_common.ops import ASGIApp, Receive, Scope, Send, ops_routes
from mailfleet_common.serving import serve

from mailfleet_webhooks.settings import Settings
from mailfleet_webhooks.worker import WebhookWorker

log = logging.getLogger(__name__)


class WebhooksApp:
    """A bare ASGI app: the lifespan runs the worker, HTTP serves the ops routes."""

    def __init__(self, worker: WebhookWorker) -> None:
        self.worker = worker
        self._routes: dict[str, ASGIApp] = dict(ops_routes([worker.is_ready]))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        route = self._routes.get(scope.get("path", ""))
        if route is not None:
            await route(scope, receive, send)
            return
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": b"not found"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: dict[str, Any] = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.worker.start()
                except Exception as exc:
                    log.exception("webhook worker startup failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    raise
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.worker.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings) -> WebhooksApp:
    """The worker app. Raises SecretBoxError without crypto keys (the secrets are encrypted)."""
    return WebhooksApp(WebhookWorker(settings))


def run() -> None:
    """Console script: read the environment, log JSON, serve until SIGTERM."""
    settings = Settings()
    configure_logging(settings.log_level, service="mailfleet-webhooks")
    try:
        app = create_app(settings)
    except SecretBoxError as exc:
        log.critical("webhook worker not started: %s", exc)
        raise SystemExit(2) from None
    serve(app, settings.http, loop="uvloop", lifespan="on")
