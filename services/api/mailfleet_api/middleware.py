"""ASGI middleware: request metrics, plain-text errors made problems, RateLimit fields."""

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailfleet_api.errors import problem_response
from mailfleet_api.rate_limits import SCOPE_KEY, header_fields


class _HttpMiddleware:
    """Middleware that acts on HTTP requests only and passes anything else through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestMetrics(_HttpMiddleware):
    """Counts requests and times them, labelled by route template (never the raw path)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        super().__init__(app)
        self.requests = Counter(
            "mailfleet_api_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "mailfleet_api_request_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            registry=registry,
        )

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.requests.labels(template, method, str(status)).inc()
            self.latency.labels(template, method).observe(time.perf_counter() - started)


class PlainErrorsAsProblems(_HttpMiddleware):
    """Turns the error answers Starlette writes as plain text into problem documents.

    The request body limit answers 413 from middleware, outside every exception handler; this
    gives it, and any other plain-text error, the one error shape of the API.
    """

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: Message | None = None
        text = b""

        async def send_as_problem(message: Message) -> None:
            nonlocal held, text
            if message["type"] == "http.response.start" and message["status"] >= 400:
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if content_type.startswith("text/plain"):
                    held = message
                    return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            text += message.get("body", b"")
            if message.get("more_body", False):
                return
            detail = text.decode(errors="replace")[:300] or "the request failed"
            response = problem_response(Request(scope), held["status"], detail)
            await response(scope, receive, send)

        await self.app(scope, receive, send_as_problem)


class RateLimitHeaders(_HttpMiddleware):
    """Adds the RateLimit fields to the answer of every request a rate limit counted.

    The limiter runs in a dependency, after authentication; its quotas reach this through
    the request's scope, so error answers (a 404, the 429 itself) carry the fields too.
    """

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:

        async def send_with_fields(message: Message) -> None:
            quotas = scope.get(SCOPE_KEY)
            if message["type"] == "http.response.start" and quotas:
                message["headers"] = [*message.get("headers", []), *header_fields(quotas)]
            await send(message)

        await self.app(scope, receive, send_with_fields)
