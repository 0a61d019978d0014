"""Connecting an account by OAuth consent (authorization code with PKCE) at the doubles."""

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager
from mailfleet_api.main import create_app
from mailfleet_api.settings import ApiHttpSettings, Settings
from mailfleet_common.crypto import SecretBox
from mailfleet_common.settings import OAuthClientSettings, OAuthSettings

from tests.doubles.fixtures import _google_server, _microsoft_server, google, microsoft
from tests.doubles.google import GoogleDouble
from tests.doubles.microsoft import MicrosoftDouble

from .conftest import Conn, account_body
from .test_account_kinds import gmail_body, oauth_smtp_body

__all__ = ["_google_server", "_microsoft_server", "google", "microsoft"]

PUBLIC_URL = "http://api"
REDIRECT_URI = f"{PUBLIC_URL}/oauth/callback"
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_MODIFY = "https://www.googleapis.com/auth/gmail.modify"
MS_SCOPES = (
    "offline_access https://outlook.office.com/SMTP.Send "
    "https://outlook.office.com/IMAP.AccessAsUser.All"
)
MAILBOX = "news@example.com"


@pytest.fixture
async def consent_client(
    request: pytest.FixtureRequest,
    settings: Settings,
    google: GoogleDouble,
    microsoft: MicrosoftDouble,
    db: Conn,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API with OAuth clients registered at the doubles, as a browser-less HTTP client.

    Google's scopes are the default ones unless a test is parametrized indirectly with others.
    """
    google_scopes = getattr(request, "param", f"{GMAIL_SEND} {GMAIL_MODIFY}")
    google_client = google.tokens.add_client("google-app", "google-secret", (REDIRECT_URI,))
    microsoft_client = microsoft.add_client("common", (REDIRECT_URI,))
    oauth = OAuthSettings(
        google=OAuthClientSettings(
            client_id=google_client.client_id,
            client_secret=google_client.secret or "",
            token_uri=google.token_uri,
            auth_uri=google.auth_uri,
            scopes=google_scopes,
        ),
        microsoft=OAuthClientSettings(
            client_id=microsoft_client.client_id,
            client_secret=microsoft_client.secret or "",
            token_uri=microsoft.token_uri(),
            auth_uri=microsoft.auth_uri(),
            scopes=MS_SCOPES,
        ),
    )
    configured = settings.model_copy(
        update={
            "oauth": oauth,
            "http": ApiHttpSettings(public_url=PUBLIC_URL),
            "gmail": settings.gmail.model_copy(update={"api_url": google.gmail_url}),
        }
    )
    app = create_app(configured)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
            yield http


async def _create(http: httpx.AsyncClient, admin: dict[str, Any], body: dict[str, Any]) -> str:
    created = await http.post("/api/admin/accounts", json=body, headers=admin["headers"])
    assert created.status_code == 201, created.text
    account_id: str = created.json()["id"]
    return account_id


async def _consent(
    http: httpx.AsyncClient, admin: dict[str, Any], account_id: str, **body: Any
) -> dict[str, Any]:
    started = await http.post(
        f"/api/admin/accounts/{account_id}/oauth/consent", json=body, headers=admin["headers"]
    )
    assert started.status_code == 200, started.text
    answer: dict[str, Any] = started.json()
    return answer


async def _browse(url: str) -> str:
    """What the consenting browser does at the provider: the callback path it is sent back to."""
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(url)
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT_URI)
    return location.removeprefix(PUBLIC_URL)


async def _stored_refresh_token(db: Conn, crypto_keys: str) -> str:
    box = SecretBox(crypto_keys.split(","))
    return box.decrypt(bytes(await db.fetchval("SELECT refresh_token_enc FROM account_oauth")))


async def _account(http: httpx.AsyncClient, admin: dict[str, Any], account_id: str) -> Any:
    return (await http.get(f"/api/admin/accounts/{account_id}", headers=admin["headers"])).json()


async def test_consenting_at_google_connects_a_gmail_api_account_and_resumes_it(
    consent_client: httpx.AsyncClient,
    admin: dict[str, Any],
    google: GoogleDouble,
    db: Conn,
    crypto_keys: str,
) -> None:
    google.add_user(MAILBOX)
    account_id = await _create(consent_client, admin, gmail_body())
    started = await _consent(consent_client, admin, account_id, provider="google")
    assert started["redirect_uri"] == REDIRECT_URI
    query = parse_qs(urlsplit(started["authorization_url"]).query)
    assert {k: v[0] for k, v in query.items() if k != "code_challenge"} == {
        "response_type": "code",
        "client_id": "google-app",
        "redirect_uri": REDIRECT_URI,
        "scope": f"{GMAIL_SEND} {GMAIL_MODIFY}",
        "state": query["state"][0],
        "code_challenge_method": "S256",
        "access_type": "offline",
        "prompt": "consent",
        "include_granted_scopes": "true",
        "login_hint": MAILBOX,
    }
    row = await db.fetchrow("SELECT * FROM oauth_consents")
    assert row["state_hash"] != query["state"][0].encode()
    assert (row["provider"], row["login_hint"], row["started_by"]) == (
        "google",
        MAILBOX,
        admin["id"],
    )
    verifier = SecretBox(crypto_keys.split(",")).decrypt(bytes(row["code_verifier_enc"]))
    assert len(verifier) >= 43

    callback = await _browse(started["authorization_url"])
    page = await consent_client.get(callback)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer"
    assert f"connected to {MAILBOX}" in page.text
    account = await _account(consent_client, admin, account_id)
    assert (account["status"], account["oauth"]["provider"], account["oauth"]["consent"]) == (
        "active",
        "google",
        "granted",
    )
    stored = await _stored_refresh_token(db, crypto_keys)
    assert google.tokens.refresh_tokens[stored].user == MAILBOX
    used = await db.fetchrow("SELECT used_at, code_verifier_enc, outcome FROM oauth_consents")
    assert (used["code_verifier_enc"], used["outcome"]) == (None, "connected")

    replayed = await consent_client.get(callback)
    assert replayed.status_code == 400
    assert "used already" in replayed.text


async def test_consenting_at_microsoft_connects_an_oauth2_smtp_account(
    consent_client: httpx.AsyncClient,
    admin: dict[str, Any],
    microsoft: MicrosoftDouble,
    db: Conn,
    crypto_keys: str,
) -> None:
    account_id = await _create(consent_client, admin, oauth_smtp_body())
    started = await _consent(consent_client, admin, account_id, provider="microsoft")
    query = parse_qs(urlsplit(started["authorization_url"]).query)
    assert "offline_access" in query["scope"][0].split()
    assert query["code_challenge_method"] == ["S256"]
    assert "access_type" not in query
    page = await consent_client.get(await _browse(started["authorization_url"]))
    assert page.status_code == 200, page.text
    account = await _account(consent_client, admin, account_id)
    assert (account["status"], account["auth_kind"], account["oauth"]["provider"]) == (
        "active",
        "oauth2",
        "microsoft",
    )
    stored = await _stored_refresh_token(db, crypto_keys)
    assert microsoft.tokens.refresh_tokens[stored].user == MAILBOX


async def _gmail_consent_as(
    http: httpx.AsyncClient, admin: dict[str, Any], google: GoogleDouble, user: str
) -> tuple[str, httpx.Response]:
    """A gmail-api account for MAILBOX, and the callback's page once `user` consented for it."""
    google.add_user(user)
    account_id = await _create(http, admin, gmail_body())
    started = await _consent(http, admin, account_id, provider="google", login_hint=user)
    return account_id, await http.get(await _browse(started["authorization_url"]))


@pytest.mark.parametrize("consent_client", [GMAIL_SEND], indirect=True)
async def test_a_send_only_grant_is_taken_though_its_mailbox_cannot_be_read(
    consent_client: httpx.AsyncClient, admin: dict[str, Any], google: GoogleDouble, db: Conn
) -> None:
    # gmail.send does not allow users.getProfile: Gmail answers 403, the mailbox stays unknown.
    account_id, page = await _gmail_consent_as(consent_client, admin, google, "someone@example.com")
    assert page.status_code == 200, page.text
    assert f"connected to {MAILBOX}" in page.text
    assert (await _account(consent_client, admin, account_id))["status"] == "active"


async def _nothing_stored(db: Conn, http: httpx.AsyncClient, admin: Any, account_id: str) -> None:
    assert await db.fetchval("SELECT count(*) FROM account_oauth") == 0
    account = await _account(http, admin, account_id)
    assert account["status"] == "paused"
    assert account["status_reason"].startswith("consent needed")


async def test_a_refused_consent_stores_nothing(
    consent_client: httpx.AsyncClient, admin: dict[str, Any], google: GoogleDouble, db: Conn
) -> None:
    google.deny_consent = True
    account_id = await _create(consent_client, admin, gmail_body())
    started = await _consent(consent_client, admin, account_id, provider="google")
    page = await consent_client.get(await _browse(started["authorization_url"]))
    assert page.status_code == 400
    assert "access_denied" in page.text
    await _nothing_stored(db, consent_client, admin, account_id)
    assert "access_denied" in await db.fetchval("SELECT outcome FROM oauth_consents")


async def test_consent_for_another_mailbox_than_the_accounts_is_refused(
    consent_client: httpx.AsyncClient, admin: dict[str, Any], google: GoogleDouble, db: Conn
) -> None:
    account_id, page = await _gmail_consent_as(consent_client, admin, google, "someone@example.com")
    assert page.status_code == 400
    assert f"given for someone@example.com, but the account's mailbox is {MAILBOX}" in page.text
    await _nothing_stored(db, consent_client, admin, account_id)


async def test_a_code_the_token_endpoint_refuses_stores_nothing(
    consent_client: httpx.AsyncClient, admin: dict[str, Any], google: GoogleDouble, db: Conn
) -> None:
    account_id = await _create(consent_client, admin, gmail_body())
    started = await _consent(consent_client, admin, account_id, provider="google")
    callback = await _browse(started["authorization_url"])
    state = parse_qs(urlsplit(callback).query)["state"][0]
    page = await consent_client.get("/oauth/callback", params={"state": state, "code": "4/forged"})
    assert page.status_code == 400
    assert "refused the authorization code (invalid_grant" in page.text
    await _nothing_stored(db, consent_client, admin, account_id)
    # The state is spent: the real code cannot be used with it any more.
    assert (await consent_client.get(callback)).status_code == 400


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ({}, "no state"),
        ({"state": "made-up", "code": "4/x"}, "unknown"),
        ({"state": "x" * 5000}, ""),
    ],
)
async def test_a_callback_without_a_live_state_is_refused(
    consent_client: httpx.AsyncClient, query: dict[str, str], why: str
) -> None:
    page = await consent_client.get("/oauth/callback", params=query)
    assert page.status_code in (400, 422)
    assert not page.is_redirect
    assert why in page.text


async def test_an_expired_consent_link_stores_nothing(
    consent_client: httpx.AsyncClient, admin: dict[str, Any], db: Conn
) -> None:
    account_id = await _create(consent_client, admin, gmail_body())
    started = await _consent(consent_client, admin, account_id, provider="google")
    await db.execute("UPDATE oauth_consents SET expires_at = now() - interval '1 second'")
    page = await consent_client.get(await _browse(started["authorization_url"]))
    assert page.status_code == 400
    assert "expired" in page.text
    await _nothing_stored(db, consent_client, admin, account_id)


async def test_who_may_start_a_consent_and_for_what(
    consent_client: httpx.AsyncClient,
    client: httpx.AsyncClient,
    admin: dict[str, Any],
    operator: dict[str, Any],
) -> None:
    account_id = await _create(consent_client, admin, gmail_body())
    url = f"/api/admin/accounts/{account_id}/oauth/consent"
    body = {"provider": "google"}
    assert (await consent_client.post(url, json=body)).status_code == 401
    assert (
        await consent_client.post(url, json=body, headers=operator["headers"])
    ).status_code == 403
    microsoft = await consent_client.post(
        url, json={"provider": "microsoft"}, headers=admin["headers"]
    )
    assert microsoft.status_code == 422
    assert "provider must be google" in microsoft.text
    # The session's API has no OAuth client configured.
    unconfigured = await client.post(url, json=body, headers=admin["headers"])
    assert unconfigured.status_code == 409
    assert "MAILFLEET_OAUTH__GOOGLE__CLIENT_ID" in unconfigured.text
    assert "MAILFLEET_HTTP__PUBLIC_URL" in unconfigured.text
    password_account = await _create(consent_client, admin, account_body(name="other"))
    await consent_client.delete(f"/api/admin/accounts/{password_account}", headers=admin["headers"])
    archived = await consent_client.post(
        f"/api/admin/accounts/{password_account}/oauth/consent", json=body, headers=admin["headers"]
    )
    assert archived.status_code == 409
