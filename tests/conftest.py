"""Session-wide fixtures: a freshly migrated PostgreSQL database and a private RabbitMQ vhost.

Servers come from env (MAILFLEET_TEST_POSTGRES_DSN, MAILFLEET_TEST_RABBIT_URL) and default to
the local ones. Each test session gets its own database and vhost, so suites can run side by
side and nothing leaks between runs.
"""

import asyncio
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from mailfleet_common.crypto import generate_key
from mailfleet_common.migrate import migrate

from tests.smtp_peer import SmtpPeer

ADMIN_DSN = os.environ.get(
    "MAILFLEET_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBIT_URL = os.environ.get("MAILFLEET_TEST_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/")

TABLES = (
    "idempotency_keys, suppressions, events, send_attempts, messages, campaigns, "
    "account_daily_usage, accounts, api_keys, users, sender_replicas, soft_bounces, "
    "inbound_reports, mailbox_checkpoints, uncertain_resolutions, "
    # TRUNCATE fires no trigger: the counters go with the rows they count.
    "counter_buckets, counter_deltas, engagement_firsts"
)


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def database_dsn() -> Iterator[str]:
    """A new database with every migration applied, dropped at the end of the session."""
    name = f"mailfleet_test_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        await migrate(_with_database(ADMIN_DSN, name))

    async def drop() -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    yield _with_database(ADMIN_DSN, name)
    asyncio.run(drop())


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def rabbit_url() -> Iterator[str]:
    """A private vhost on the local broker when rabbitmqctl is at hand, else the URL as given."""
    parts = urlsplit(RABBIT_URL)
    if shutil.which("rabbitmqctl") is None or parts.hostname not in ("127.0.0.1", "localhost"):
        yield RABBIT_URL
        return
    vhost = f"mailfleet-test-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
    yield urlunsplit(parts._replace(path=f"/{vhost}"))
    _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def crypto_keys() -> str:
    return ",".join([generate_key(), generate_key()])


@pytest.fixture(scope="session")
def tracking_keys() -> str:
    """Two tracking keys, newest first, as MAILFLEET_TRACKING__KEYS takes them."""
    return ",".join([secrets.token_urlsafe(32), secrets.token_urlsafe(32)])


@pytest.fixture
async def db(database_dsn: str) -> AsyncIterator["asyncpg.Connection[asyncpg.Record]"]:
    """A connection to an emptied test database (tables truncated before the test)."""
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def smtp_peer() -> Iterator[SmtpPeer]:
    """An aiosmtpd server in the test process, steered by recipients (see tests.smtp_peer)."""
    peer = SmtpPeer().start()
    yield peer
    peer.stop()
