"""The API application: create_app(settings) builds it; app_from_env() is where env is read."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from faststream.rabbit import RabbitBroker
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
from mailfleet_common import topology, tracing
from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import create_pool
from mailfleet_common.jsonlog import configure_logging
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from mailfleet_api.auth import PasswordHasherPool, TokenSigner
from mailfleet_api.deps import require_json_body
from mailfleet_api.errors import document_errors, install_error_handlers
from mailfleet_api.middleware import PlainErrorsAsProblems, RateLimitHeaders, RequestMetrics
from mailfleet_api.rate_limits import RateLimiter
from mailfleet_api.routes import (
    account_oauth,
    accounts,
    analytics,
    auth,
    campaigns,
    events,
    exports,
    inbound_reports,
    messages,
    oauth_callback,
    ops,
    pools,
    queue,
    stats,
    suppressions,
    transactional,
    uncertain,
    users,
    webhooks,
)
from mailfleet_api.settings import Settings
from mailfleet_api.throttle import CounterStorage, LoginThrottle

log = logging.getLogger(__name__)

_ROUTES = (
    ops,
    analytics,
    auth,
    users,
    accounts,
    account_oauth,
    oauth_callback,
    pools,
    stats,
    campaigns,
    queue,
    suppressions,
    inbound_reports,
    uncertain,
    transactional,
    webhooks,
    exports,
    messages,
    events,
)


def create_app(settings: Settings) -> FastAPI:
    """Build the API. Refuses to build with a weak JWT secret or no encryption key."""
    # Checked here, not at first use, so a misconfigured deployment fails at start.
    token_signer = TokenSigner.from_settings(settings.auth)
    secret_box = SecretBox.from_settings(settings.crypto)
    counters = CounterStorage.from_settings(settings.throttle)
    login_throttle = LoginThrottle.from_settings(settings.throttle, counters)
    # A registry per app (tests build several), with the process_* and python_* series the
    # other services get from the default registry.
    registry = CollectorRegistry()
    rate_limiter = RateLimiter(counters, settings.rate_limit, registry)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        pool = await create_pool(settings.postgres)
        broker = RabbitBroker(
            settings.rabbit.url.get_secret_value(),
            reconnect_interval=settings.rabbit.reconnect_s,
            logger=log,
            middlewares=[RabbitTelemetryMiddleware()] if tracing.enabled() else (),
        )
        try:
            await broker.start()
            await broker.declare_exchange(topology.EVENTS)
            yield {
                "settings": settings,
                "pool": pool,
                "broker": broker,
                "secret_box": secret_box,
                "token_signer": token_signer,
                "passwords": PasswordHasherPool(
                    settings.auth.verify_workers, settings.auth.verify_queue
                ),
                "login_throttle": login_throttle,
                "rate_limiter": rate_limiter,
                "registry": registry,
            }
        finally:
            await broker.stop()
            await pool.close()
            await counters.close()

    # FastAPI traces requests itself (a SERVER span continuing the caller's traceparent, and
    # spans for dependencies and the endpoint) once configure_tracing has installed a tracer
    # provider; without one it does nothing.
    app = FastAPI(
        telemetry={"metrics": False, "logs": False},
        title="mailfleet",
        summary="Self-hosted email delivery: accounts, campaigns and the delivery queue.",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(require_json_body)],
    )
    install_error_handlers(app)
    document_errors(app)
    for module in _ROUTES:
        app.include_router(module.router)
    # Requests past this size get 413 before they are read in full. Added as middleware, not
    # as FastAPI(max_body_size=...), whose 413 is plain text sent from outside every handler.
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=settings.enqueue.max_body_bytes)
    app.add_middleware(PlainErrorsAsProblems)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(RequestMetrics, registry=registry)
    return app


def app_from_env() -> FastAPI:
    """The app with settings from MAILFLEET_* env vars (``uvicorn --factory``)."""
    settings = Settings()
    configure_logging(settings.log_level, service="mailfleet-api")
    tracing.configure_tracing(settings.tracing, "mailfleet-api")
    return create_app(settings)
