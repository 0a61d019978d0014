"""The API application: create_app(settings) builds it; app_from_env() is where env is read."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from faststream.rabbit import RabbitBroker
from mailfleet_common import topology
from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import create_pool
from mailfleet_common.jsonlog import configure_logging
from prometheus_client import CollectorRegistry

from mailfleet_api.auth import TokenSigner
from mailfleet_api.errors import install_error_handlers
from mailfleet_api.middleware import RequestMetrics
from mailfleet_api.routes import (
    accounts,
    auth,
    campaigns,
    inbound_reports,
    ops,
    pools,
    queue,
    stats,
    suppressions,
    uncertain,
    users,
)
from mailfleet_api.settings import Settings

log = logging.getLogger(__name__)

_ROUTES = (
    ops,
    auth,
    users,
    accounts,
    pools,
    stats,
    campaigns,
    queue,
    suppressions,
    inbound_reports,
    uncertain,
)


def create_app(settings: Settings) -> FastAPI:
    """Build the API. Refuses to build with a weak JWT secret or no encryption key."""
    # Checked here, not at first use, so a misconfigured deployment fails at start.
    token_signer = TokenSigner.from_settings(settings.auth)
    secret_box = SecretBox.from_settings(settings.crypto)
    registry = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        pool = await create_pool(settings.postgres)
        broker = RabbitBroker(
            settings.rabbit.url.get_secret_value(),
            reconnect_interval=settings.rabbit.reconnect_s,
            logger=log,
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
                "registry": registry,
            }
        finally:
            await broker.stop()
            await pool.close()

    app = FastAPI(
        title="mailfleet",
        summary="Self-hosted email delivery: accounts, campaigns and the delivery queue.",
        version="0.1.0",
        lifespan=lifespan,
        # Requests past this size get 413 before they are read in full.
        max_body_size=settings.enqueue.max_body_bytes,
    )
    install_error_handlers(app)
    for module in _ROUTES:
        app.include_router(module.router)
    app.add_middleware(RequestMetrics, registry=registry)
    return app


def app_from_env() -> FastAPI:
    """The app with settings from MAILFLEET_* env vars (``uvicorn --factory``)."""
    settings = Settings()
    configure_logging(settings.log_level, service="mailfleet-api")
    return create_app(settings)
