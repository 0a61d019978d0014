"""Fixtures for OAuth token tests: the Google and Microsoft doubles and OAuth accounts."""

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from mailfleet_common.crypto import SecretBox
from mailfleet_common.oauth import AccessTokens
from mailfleet_common.settings import OAuthClientSettings, OAuthSettings
from pydantic import SecretStr

from tests.doubles.fixtures import *  # noqa: F403
from tests.doubles.google import GoogleDouble
from tests.doubles.microsoft import MicrosoftDouble
from tests.doubles.oauth import OAuthClient

SEND = "https://www.googleapis.com/auth/gmail.send"
MODIFY = "https://www.googleapis.com/auth/gmail.modify"
SMTP_SEND = "https://outlook.office.com/SMTP.Send"
TENANT = "contoso.onmicrosoft.com"


@pytest.fixture
def box(crypto_keys: str) -> SecretBox:
    return SecretBox(crypto_keys.split(","))


@pytest.fixture
def oauth_settings(google: GoogleDouble, microsoft: MicrosoftDouble) -> OAuthSettings:
    """Settings naming one client at each double (their secrets filled in by the tests)."""
    return OAuthSettings(
        google=OAuthClientSettings(token_uri=google.token_uri, scopes=f"{SEND} {MODIFY}"),
        microsoft=OAuthClientSettings(
            token_uri=microsoft.token_uri(TENANT), scopes=f"offline_access {SMTP_SEND}"
        ),
    )


@pytest.fixture
def google_client(google: GoogleDouble, oauth_settings: OAuthSettings) -> OAuthClient:
    client = google.add_client()
    oauth_settings.google.client_id = client.client_id
    oauth_settings.google.client_secret = SecretStr(client.secret)
    return client


@pytest.fixture
def microsoft_client(microsoft: MicrosoftDouble, oauth_settings: OAuthSettings) -> OAuthClient:
    client = microsoft.add_client(TENANT)
    oauth_settings.microsoft.client_id = client.client_id
    oauth_settings.microsoft.client_secret = SecretStr(client.secret)
    return client


@pytest.fixture
def tokens(oauth_settings: OAuthSettings, box: SecretBox) -> AccessTokens:
    return AccessTokens(oauth_settings, box)


AccountFactory = Callable[..., Awaitable[uuid.UUID]]


@pytest.fixture
def make_account(db: asyncpg.Connection) -> AccountFactory:
    """An active SMTP account sending as `email` (its OAuth credentials imported by the test)."""

    async def make(email: str = "alice@example.com") -> uuid.UUID:
        account_id: uuid.UUID = await db.fetchval(
            """
            INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, smtp_username,
                                  from_email, daily_limit)
            VALUES ($1, 'smtp.example.com', 587, 'starttls', $1, $1, 1000) RETURNING id
            """,
            email,
        )
        return account_id

    return make
