"""Fixtures for the sender: an SMTP peer, settings, a running replica, and data helpers."""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from mailfleet_common import topology
from mailfleet_common.crypto import SecretBox
from mailfleet_common.messages import SendBatch
from mailfleet_common.oauth import import_refresh_token
from mailfleet_common.settings import (
    CryptoSettings,
    GmailSettings,
    OAuthClientSettings,
    OAuthSettings,
    PostgresSettings,
    RabbitSettings,
    ReplicaSettings,
    TrackingSettings,
)
from mailfleet_common.tracking import Token, TokenSigner, parse_keys
from mailfleet_sender.main import create_app
from mailfleet_sender.metrics import SKIPPED
from mailfleet_sender.replica import SenderReplica
from mailfleet_sender.settings import SenderSettings, Settings
from pydantic import SecretStr

from tests.doubles.fixtures import *  # noqa: F403 - the google and microsoft doubles
from tests.doubles.google import GoogleDouble
from tests.doubles.microsoft import MicrosoftDouble
from tests.doubles.oauth import OAuthClient

Db = "asyncpg.Connection[asyncpg.Record]"
TRACKER = "http://tracker.test"


@pytest.fixture
def settings(database_dsn: str, rabbit_url: str, crypto_keys: str, tracking_keys: str) -> Settings:
    return Settings(
        postgres=PostgresSettings(dsn=database_dsn, pool_min=1, pool_max=4),
        rabbit=RabbitSettings(url=rabbit_url),
        crypto=CryptoSettings(keys=crypto_keys),
        tracking=TrackingSettings(keys=tracking_keys, base_url=TRACKER),
        replicas=ReplicaSettings(timeout_s=1.0),
        sender=SenderSettings(
            heartbeat_s=0.2,
            account_poll_s=0.2,
            retry_base_s=1,
            retry_cap_s=10,
            max_attempts=5,
            smtp_timeout_s=5,
            helo_name="sender.test",
        ),
    )


GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GOOGLE_MAIL = "https://mail.google.com/"
OUTLOOK_SMTP = "https://outlook.office.com/SMTP.Send"
TENANT = "contoso.onmicrosoft.com"


@pytest.fixture
def google_client(google: GoogleDouble) -> OAuthClient:
    return google.add_client()


@pytest.fixture
def microsoft_client(microsoft: MicrosoftDouble) -> OAuthClient:
    return microsoft.add_client(TENANT)


@pytest.fixture
def oauth_settings(
    settings: Settings,
    google: GoogleDouble,
    microsoft: MicrosoftDouble,
    google_client: OAuthClient,
    microsoft_client: OAuthClient,
) -> Settings:
    """The sender's settings with OAuth clients at the doubles, and Gmail at Google's.

    The quota gap is made negligible (a test of pacing sets its own), and so are the waits of
    a held account.
    """
    return settings.model_copy(
        update={
            "oauth": OAuthSettings(
                google=OAuthClientSettings(
                    client_id=google_client.client_id,
                    client_secret=SecretStr(google_client.secret or ""),
                    token_uri=google.token_uri,
                    scopes=f"{GOOGLE_MAIL} {GMAIL_SEND}",
                ),
                microsoft=OAuthClientSettings(
                    client_id=microsoft_client.client_id,
                    client_secret=SecretStr(microsoft_client.secret or ""),
                    token_uri=microsoft.token_uri(TENANT),
                    scopes=f"offline_access {OUTLOOK_SMTP}",
                ),
            ),
            "gmail": GmailSettings(api_url=google.gmail_url, timeout_s=1.0),
            "sender": settings.sender.model_copy(
                update={
                    "gmail_units_per_minute": 6_000_000,
                    "connect_backoff_base_s": 0.3,
                    "connect_backoff_cap_s": 3.0,
                }
            ),
        }
    )


@pytest.fixture
def signer(tracking_keys: str) -> TokenSigner:
    """Verifies the tokens the sender signed with the test tracking keys."""
    return TokenSigner(parse_keys(tracking_keys))


def verified(signer: TokenSigner, url: str, path: str, message_id: int) -> Token:
    """The token of one of our tracker URLs (`path` names the kind), checked for the message."""
    prefix = f"{TRACKER}{path}"
    assert url.startswith(prefix), url
    token = signer.verify(url[len(prefix) :])
    assert token is not None, url
    assert token.message_id == message_id
    assert abs(token.issued_at - time.time()) < 60
    return token


@asynccontextmanager
async def running_sender(
    settings: Settings, replica: SenderReplica | None = None
) -> AsyncIterator[SenderReplica]:
    """The real app (broker, replica, ops routes), started and stopped as uvicorn would."""
    replica = replica or SenderReplica(settings)
    app = create_app(settings, replica)
    stop = asyncio.Event()

    async def serve() -> None:
        # Its own task: the app's task group must be entered and left by the same task.
        async with app.start_lifespan_context():
            await stop.wait()

    task = asyncio.create_task(serve())
    try:
        await wait_for(lambda: _ready_or_crashed(replica, task), within=15)
        if task.done():
            task.result()
        yield replica
    finally:
        stop.set()
        await task


async def _ready_or_crashed(replica: SenderReplica, task: "asyncio.Task[None]") -> bool:
    return task.done() or await replica.is_ready()


@pytest.fixture
async def sender(settings: Settings, db: Any) -> AsyncIterator[SenderReplica]:
    async with running_sender(settings) as replica:
        yield replica


async def wait_for(
    check: Callable[[], Awaitable[Any]], within: float = 10, interval: float = 0.05
) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


async def insert_account(
    db: Any,
    port: int,
    *,
    crypto_keys: str | None = None,
    username: str | None = None,
    password: str | None = None,
    from_name: str | None = "Mail Fleet",
    min_gap_ms: int = 0,
    status: str = "active",
    tls: str = "none",
) -> uuid.UUID:
    encrypted = None
    if password is not None and crypto_keys is not None:
        encrypted = SecretBox([k for k in crypto_keys.split(",") if k]).encrypt(password)
    account_id: uuid.UUID = await db.fetchval(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, smtp_username,
                              smtp_password_enc, from_email, from_name, daily_limit,
                              min_gap_ms, status)
        VALUES ('test', '127.0.0.1', $1, $7, $2, $3, 'news@fleet.example.com', $4, 1000,
                $5, $6)
        RETURNING id
        """,
        port,
        username,
        encrypted,
        from_name,
        min_gap_ms,
        status,
        tls,
    )
    return account_id


async def insert_oauth_account(
    db: Any,
    crypto_keys: str,
    provider: str,
    refresh_token: str,
    email: str,
    *,
    kind: str = "gmail-api",
    smtp_port: int | None = None,
    smtp_username: str | None = None,
    min_gap_ms: int = 0,
) -> uuid.UUID:
    """An active OAuth2 account of `kind` sending as `email`, its refresh token imported.

    A 'gmail-api' account has no SMTP server; an 'smtp' one uses the peer on `smtp_port`.
    """
    smtp = (None, None, None) if kind == "gmail-api" else ("127.0.0.1", smtp_port, "none")
    account_id: uuid.UUID = await db.fetchval(
        """
        INSERT INTO accounts (name, kind, auth_kind, smtp_host, smtp_port, smtp_tls,
                              smtp_username, from_email, from_name, daily_limit, min_gap_ms)
        VALUES ($1, $2, 'oauth2', $3, $4, $5, $6, $1, 'Mail Fleet', 1000, $7)
        RETURNING id
        """,
        email,
        kind,
        *smtp,
        smtp_username,
        min_gap_ms,
    )
    box = SecretBox([k for k in crypto_keys.split(",") if k])
    await import_refresh_token(db, box, account_id, provider, refresh_token)
    return account_id


async def account_state(db: Any, account_id: uuid.UUID) -> Any:
    """The account's status, pause reason and hold."""
    return await db.fetchrow(
        "SELECT status, status_reason, held_until, held_reason FROM accounts WHERE id = $1",
        account_id,
    )


async def held_state(db: Any, account_id: uuid.UUID) -> Any:
    """The account's state once it is held, else None."""
    state = await account_state(db, account_id)
    return state if state["held_until"] is not None else None


async def attempts_of(db: Any, ids: list[int]) -> list[int]:
    """The attempts counted on each message, in id order."""
    rows = await db.fetch(
        "SELECT attempts FROM messages WHERE id = ANY($1::bigint[]) ORDER BY id", ids
    )
    return [row["attempts"] for row in rows]


async def insert_campaign(
    db: Any,
    *,
    subject: str = "Hello {{ name }}",
    html: str | None = "<p>Hi {{ name }}, your code is {{ code }}</p>",
    text: str | None = "Hi {{ name }}, your code is {{ code }}",
    status: str = "running",
    tracking: bool = True,
) -> uuid.UUID:
    owner = await db.fetchval(
        "INSERT INTO users (email, password_hash, role) VALUES ($1, 'x', 'admin') RETURNING id",
        f"{uuid.uuid4().hex}@example.com",
    )
    campaign_id: uuid.UUID = await db.fetchval(
        """
        INSERT INTO campaigns (owner_id, name, subject, html_body, text_body, status, tracking)
        VALUES ($1, 'test', $2, $3, $4, $5, $6) RETURNING id
        """,
        owner,
        subject,
        html,
        text,
        status,
        tracking,
    )
    return campaign_id


async def insert_messages(
    db: Any,
    campaign_id: uuid.UUID,
    account_id: uuid.UUID,
    recipients: list[str | tuple[str, str | None]],
    variables: dict[str, Any] | None = None,
) -> list[int]:
    """Messages already `assigned` to the account, as the dispatcher leaves them."""
    ids = []
    for recipient in recipients:
        email, name = (recipient, "Reader") if isinstance(recipient, str) else recipient
        ids.append(
            await db.fetchval(
                """
                INSERT INTO messages (campaign_id, email, name, variables, status, account_id,
                                      assigned_at)
                VALUES ($1, $2, $3, $4::jsonb, 'assigned', $5, now()) RETURNING id
                """,
                campaign_id,
                email,
                name,
                json.dumps(variables or {"code": "c-1"}),
                account_id,
            )
        )
    return ids


async def reassign(db: Any, account_id: uuid.UUID, ids: list[int]) -> None:
    """What the dispatcher does with a deferred message whose retry is due."""
    await db.execute(
        """
        UPDATE messages SET status = 'assigned', account_id = $1, assigned_at = now()
        WHERE id = ANY($2::bigint[]) AND status = 'deferred'
        """,
        account_id,
        ids,
    )


async def publish_raw(rabbit_url: str, account_id: uuid.UUID, body: bytes) -> None:
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            topology.SEND.name, type=topology.SEND.type.value, durable=True
        )
        spec = topology.send_queue(account_id)
        queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
        await queue.bind(exchange, routing_key=spec.routing_key)
        await exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=str(account_id),
        )


async def publish_batch(rabbit_url: str, account_id: uuid.UUID, ids: list[int]) -> None:
    command = SendBatch(account_id=account_id, message_ids=ids, dispatched_at=datetime.now(UTC))
    await publish_raw(rabbit_url, account_id, command.model_dump_json().encode())


async def statuses(db: Any, ids: list[int]) -> list[str]:
    rows = await db.fetch(
        "SELECT status FROM messages WHERE id = ANY($1::bigint[]) ORDER BY id", ids
    )
    return [row["status"] for row in rows]


async def settled(db: Any, ids: list[int], wanted: str = "sent") -> bool:
    return all(s == wanted for s in await statuses(db, ids))


async def deliver_one(
    db: Any, smtp_port: int, rabbit_url: str, email: str, wanted: str = "sent", **campaign: Any
) -> list[int]:
    """One message to `email` through a new account and campaign, settled in `wanted`."""
    account = await insert_account(db, smtp_port)
    campaign_id = await insert_campaign(db, **campaign)
    ids = await insert_messages(db, campaign_id, account, [email])
    await publish_batch(rabbit_url, account, ids)
    await wait_for(lambda: settled(db, ids, wanted))
    return ids


def skipped(reason: str | None = None) -> float:
    """Commanded messages the sender did not send, for one reason or in all."""
    return sum(
        sample.value
        for sample in SKIPPED.collect()[0].samples
        if sample.name.endswith("_total") and reason in (None, sample.labels["reason"])
    )


async def sender_idle(sender: SenderReplica) -> bool:
    """No command was being worked through in the last 0.3 s."""
    before = skipped()
    await asyncio.sleep(0.3)
    return skipped() == before


async def drain_queue(rabbit_url: str, name: str) -> list[dict[str, Any]]:
    """Every message now in a queue, decoded from JSON (the queue is left empty)."""
    bodies = []
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(name, ensure=True)
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            try:
                bodies.append(json.loads(message.body))
            except ValueError:
                bodies.append({"raw": message.body.decode(errors="replace")})
    return bodies
