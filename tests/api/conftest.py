"""Fixtures for API tests: the app with its lifespan on the test database and broker."""

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from mailfleet_api.auth import TokenSigner, hash_password
from mailfleet_api.main import create_app
from mailfleet_api.settings import AuthSettings, Settings, ThrottleSettings
from mailfleet_common.settings import CryptoSettings, PostgresSettings, RabbitSettings

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
PASSWORD = "correct horse battery staple"

Conn = asyncpg.Connection


@pytest.fixture(scope="session")
def settings(database_dsn: str, rabbit_url: str, crypto_keys: str) -> Settings:
    return Settings(
        postgres=PostgresSettings(dsn=database_dsn, pool_min=1, pool_max=5),
        rabbit=RabbitSettings(url=rabbit_url),
        crypto=CryptoSettings(keys=crypto_keys),
        auth=AuthSettings(jwt_secret=JWT_SECRET),
        # Every test client is 127.0.0.1: a whole test run's failed logins (schemathesis
        # sends many) must not throttle the tests that follow. test_login_throttle tests it.
        throttle=ThrottleSettings(login_per_client="100000/minute"),
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application) as manager:
        application.state.asgi = manager.app
        yield application


@pytest.fixture
async def client(app: FastAPI, db: Conn) -> AsyncIterator[httpx.AsyncClient]:
    """An anonymous client of the app; the database is emptied first (through ``db``)."""
    transport = httpx.ASGITransport(app=app.state.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http


@pytest.fixture(scope="session")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture(scope="session")
def signer(settings: Settings) -> TokenSigner:
    return TokenSigner.from_settings(settings.auth)


UserFactory = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def make_user(db: Conn, password_hash: str, signer: TokenSigner) -> UserFactory:
    """Insert a user with PASSWORD; returns its id, email and a ready Authorization header."""

    async def make(
        role: str, email: str | None = None, now: datetime | None = None
    ) -> dict[str, Any]:
        email = email or f"{role}-{await db.fetchval('SELECT gen_random_uuid()')}@example.com"
        user_id: UUID = await db.fetchval(
            "INSERT INTO users (email, password_hash, role) VALUES ($1, $2, $3) RETURNING id",
            email,
            password_hash,
            role,
        )
        token, _ = signer.issue(user_id, now)
        return {"id": user_id, "email": email, "headers": {"Authorization": f"Bearer {token}"}}

    return make


@pytest.fixture
async def admin(make_user: UserFactory) -> dict[str, Any]:
    return await make_user("admin")


@pytest.fixture
async def operator(make_user: UserFactory) -> dict[str, Any]:
    return await make_user("operator")


@pytest.fixture
async def viewer(make_user: UserFactory) -> dict[str, Any]:
    return await make_user("viewer")


def account_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "primary",
        "smtp_host": "smtp.example.com",
        "smtp_port": 587,
        "smtp_tls": "starttls",
        "smtp_username": "mailer",
        "smtp_password": "s3cret-smtp-password",
        "from_email": "news@example.com",
        "from_name": "Example News",
        "daily_limit": 500,
        "min_gap_ms": 100,
    }
    body.update(overrides)
    return body


FEEDBACK_FIELDS = (
    "sent", "hard_bounces", "soft_bounces", "complaints", "replies",
    "hard_bounce_rate", "soft_bounce_rate", "complaint_rate", "reply_rate",
)  # fmt: skip


def feedback(*figures: float) -> dict[str, float]:
    """A feedback block (campaign detail, account health) with these figures, in field order."""
    return dict(zip(FEEDBACK_FIELDS, figures, strict=True))


def campaign_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "spring",
        "subject": "Hello {{ name }}",
        "text_body": "Hi {{ name }}",
        "html_body": "<p>Hi {{ name }}</p>",
    }
    body.update(overrides)
    return body


@pytest.fixture
async def campaign_id(client: httpx.AsyncClient, operator: dict[str, Any]) -> str:
    response = await client.post(
        "/api/campaigns", json=campaign_body(), headers=operator["headers"]
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def walk_pages(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], **params: Any
) -> list[list[dict[str, Any]]]:
    """Every page of a list, following next_cursor until it is null: the items of each page."""
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(path, params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
