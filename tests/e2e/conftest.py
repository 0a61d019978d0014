"""End-to-end fixtures: the real services as processes over a private database and vhost."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from tests.stack import Sink, Stack

# Fast clocks for tests: retries after ~0.2 s, sweeps twice a second, replicas dead after 3 s.
FAST_ENV = {
    "MAILFLEET_LOG_LEVEL": "WARNING",
    "MAILFLEET_DISPATCHER__TICK_MS": "100",
    "MAILFLEET_DISPATCHER__SWEEP_INTERVAL_S": "0.5",
    "MAILFLEET_REPLICAS__TIMEOUT_S": "3",
    "MAILFLEET_SENDER__ACCOUNT_POLL_S": "0.5",
    "MAILFLEET_SENDER__HEARTBEAT_S": "0.5",
    "MAILFLEET_SENDER__RETRY_BASE_S": "0.2",
    "MAILFLEET_SENDER__RETRY_CAP_S": "1",
    "MAILFLEET_SENDER__MAX_ATTEMPTS": "5",
    "MAILFLEET_SENDER__SMTP_TIMEOUT_S": "10",
}


@pytest.fixture
async def stack(
    db: "asyncpg.Connection[asyncpg.Record]",
    database_dsn: str,
    rabbit_url: str,
    crypto_keys: str,
) -> AsyncIterator[Stack]:
    async with Stack(
        postgres_dsn=database_dsn, rabbit_url=rabbit_url, crypto_keys=crypto_keys, env=FAST_ENV
    ) as running:
        yield running


@dataclass
class Fleet:
    """The usual running set: capture server (with a maildir), api, dispatcher, one sender,
    an admin client.
    """

    stack: Stack
    sink: Sink
    client: httpx.AsyncClient


@pytest.fixture
async def fleet(stack: Stack) -> AsyncIterator[Fleet]:
    sink = await stack.start_sink(maildir=True)
    await stack.start_api()
    await stack.start_dispatcher()
    await stack.start_sender()
    async with aclosing(await stack.admin_client()) as client:
        yield Fleet(stack, sink, client)


async def wait_until(
    check: Callable[[], Awaitable[bool]], within_s: float, what: str, every_s: float = 0.2
) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(every_s)


async def create_account(
    client: httpx.AsyncClient, name: str, port: int, **fields: Any
) -> dict[str, Any]:
    body = {
        "name": name,
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_tls": "none",
        "smtp_username": f"{name}@sender.example.com",
        "smtp_password": "correct horse",
        "from_email": f"{name}@sender.example.com",
        "from_name": name.title(),
        "daily_limit": 10_000,
        **fields,
    }
    response = await client.post("/api/admin/accounts", json=body)
    assert response.status_code == 201, response.text
    account: dict[str, Any] = response.json()
    return account


async def start_campaign(
    client: httpx.AsyncClient, account_ids: list[str], emails: list[str], **fields: Any
) -> str:
    """Create a campaign over these accounts, enqueue the recipients, start it."""
    body = {
        "name": "e2e",
        "subject": "Hello {{ name }}",
        "html_body": "<p>Hi {{ name }}, your code is {{ code }}.</p>",
        "text_body": "Hi {{ name }}, your code is {{ code }}.",
        "account_ids": account_ids,
        **fields,
    }
    response = await client.post("/api/campaigns", json=body)
    assert response.status_code == 201, response.text
    campaign_id: str = response.json()["id"]
    recipients = [
        {"email": email, "name": f"Person {i}", "variables": {"code": f"c{i}"}}
        for i, email in enumerate(emails)
    ]
    response = await client.post(
        "/api/queue/enqueue", json={"campaign_id": campaign_id, "recipients": recipients}
    )
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(emails), response.json()["rejected"][:5]
    response = await client.post(f"/api/campaigns/{campaign_id}/start", json={})
    assert response.status_code == 202, response.text
    return campaign_id


async def campaign_counts(client: httpx.AsyncClient, campaign_id: str) -> dict[str, int]:
    response = await client.get(f"/api/campaigns/{campaign_id}")
    assert response.status_code == 200, response.text
    counts: dict[str, int] = response.json()["messages"]
    return counts
