"""Operational HTTP endpoints for worker services: /metrics, /health and /ready."""

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ReadinessCheck = Callable[[], Awaitable[bool]]


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def metrics_app(
    registry: CollectorRegistry = REGISTRY, rendered: Callable[[], bytes] | None = None
) -> ASGIApp:
    """The registry's metrics, followed by `rendered()`: text a service formatted beforehand."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = generate_latest(registry)
        if rendered is not None:
            body += rendered()
        await _respond(send, 200, body, CONTENT_TYPE_LATEST.encode())

    return app


def health_app() -> ASGIApp:
    """Liveness: the process answers."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, b'{"status":"ok"}', b"application/json")

    return app


def readiness_app(checks: Sequence[ReadinessCheck]) -> ASGIApp:
    """Readiness: every dependency check passes (database reachable, broker connected)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        results = [await check() for check in checks]
        if all(results):
            await _respond(send, 200, b'{"status":"ready"}', b"application/json")
        else:
            await _respond(send, 503, b'{"status":"not ready"}', b"application/json")

    return app


def ops_routes(
    checks: Sequence[ReadinessCheck], rendered_metrics: Callable[[], bytes] | None = None
) -> list[tuple[str, ASGIApp]]:
    """The routes an AsgiFastStream worker mounts beside its broker."""
    return [
        ("/metrics", metrics_app(rendered=rendered_metrics)),
        ("/health", health_app()),
        ("/ready", readiness_app(checks)),
    ]
