"""Fixtures of the webhook tests: a receiver process, endpoints, and fast worker settings."""

import base64
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_args
from uuid import UUID

import asyncpg
import httpx
import pytest
from mailfleet_api.schemas.webhooks import WebhookEventType
from mailfleet_common.crypto import SecretBox

from tests.conftest import RABBIT_URL
from tests.stack import ServiceProcess, Stack, free_port

# Retries within a second or two, a request given up after 1 s: a test runs in seconds.
FAST_WORKER_ENV = {
    "MAILFLEET_WEBHOOKS__RETRY_SCHEDULE_S": json.dumps([0.1, 0.2, 0.3] + [0.5] * 40),
    "MAILFLEET_WEBHOOKS__JITTER": "0.1",
    "MAILFLEET_WEBHOOKS__TIMEOUT_S": "1",
    "MAILFLEET_WEBHOOKS__CONNECT_TIMEOUT_S": "1",
    "MAILFLEET_WEBHOOKS__LEASE_S": "3",
    "MAILFLEET_WEBHOOKS__POLL_S": "0.2",
    "MAILFLEET_WEBHOOKS__DISABLE_AFTER_FAILURES": "100000",
    # The receiver runs on this machine.
    "MAILFLEET_WEBHOOKS__ALLOW_PRIVATE_DESTINATIONS": "true",
}

EVERY_TYPE = list(get_args(WebhookEventType))


class Receiver(ServiceProcess):
    """tests/webhooks/receiver.py as a process, and what it recorded."""

    def __init__(self, workdir: Path) -> None:
        port = free_port()
        self.record_path = workdir / "received.jsonl"
        super().__init__(
            "receiver",
            [sys.executable, "-m", "tests.webhooks.receiver", str(port), str(self.record_path)],
            env=os.environ,
            port=port,
            log_path=workdir / "receiver.log",
            ready_path=None,
        )

    async def set_mode(self, mode: str, delay_s: float = 0.0) -> None:
        async with httpx.AsyncClient(base_url=self.url) as client:
            answer = await client.post("/_mode", json={"mode": mode, "delay_s": delay_s})
            answer.raise_for_status()

    def records(self) -> list[dict[str, Any]]:
        if not self.record_path.exists():
            return []
        return [json.loads(line) for line in self.record_path.read_text().splitlines()]


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    process = Receiver(tmp_path)
    await process.start()
    yield process
    await process.stop(grace_s=2)


@pytest.fixture
async def stack(database_dsn: str, crypto_keys: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with Stack(
        postgres_dsn=database_dsn,
        rabbit_url=RABBIT_URL,
        crypto_keys=crypto_keys,
        workdir=tmp_path / "stack",
        env=FAST_WORKER_ENV,
    ) as running:
        yield running


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


async def add_endpoint(
    db: "asyncpg.Connection[asyncpg.Record]",
    crypto_keys: str,
    url: str,
    event_types: list[str] | None = None,
) -> tuple[UUID, str]:
    """An endpoint owned by a new admin, straight into the table; returns (id, secret)."""
    secret = new_secret()
    box = SecretBox(crypto_keys.split(","))
    owner = await db.fetchval(
        "INSERT INTO users (email, password_hash, role) VALUES ($1, 'x', 'admin') RETURNING id",
        f"owner-{secrets.token_hex(4)}@example.com",
    )
    endpoint_id = await db.fetchval(
        """
        INSERT INTO webhook_endpoints (owner_id, url, event_types, secret_enc)
        VALUES ($1, $2, $3, $4) RETURNING id
        """,
        owner,
        url,
        event_types or EVERY_TYPE,
        box.encrypt(secret),
    )
    return endpoint_id, secret
