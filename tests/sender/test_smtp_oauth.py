"""OAuth2 SMTP accounts (Google Workspace, Microsoft 365): XOAUTH2 with the account's token.

The SMTP peer takes the access tokens the provider's double issued, and refuses the others
as Gmail or Exchange Online does. A refused token is replaced once; a grant that is gone pauses
the account; no refusal burns a message.
"""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from mailfleet_common.crypto import SecretBox
from mailfleet_common.oauth import AccessTokens
from mailfleet_common.settings import OAuthClientSettings
from mailfleet_sender.settings import Settings

from tests.doubles.google import GoogleDouble
from tests.doubles.microsoft import MicrosoftDouble
from tests.doubles.oauth import OAuthClient, TokenStore
from tests.oauth_tokens import ProviderTokens
from tests.sender.conftest import (
    GOOGLE_MAIL,
    OUTLOOK_SMTP,
    account_state,
    attempts_of,
    held_state,
    insert_campaign,
    insert_messages,
    insert_oauth_account,
    publish_batch,
    running_sender,
    settled,
    statuses,
    wait_for,
)
from tests.smtp_peer import OAuthHandler, SmtpPeer, _free_port

ADDRESS = "news@fleet.example.com"


class Provider:
    """One provider's double, the client the sender is registered as, and its SMTP server."""

    def __init__(self, name: str, store: TokenStore, refresh: Any, peer: SmtpPeer) -> None:
        self.name = name
        self.store = store
        self._refresh = refresh
        self.peer = peer

    @property
    def handler(self) -> OAuthHandler:
        assert isinstance(self.peer.handler, OAuthHandler)
        return self.peer.handler

    def refresh_token(self, user: str = ADDRESS) -> str:
        token: str = self._refresh(user)
        return token


@pytest.fixture(params=["google", "microsoft"])
def provider(
    request: pytest.FixtureRequest,
    google: GoogleDouble,
    microsoft: MicrosoftDouble,
    google_client: OAuthClient,
    microsoft_client: OAuthClient,
) -> Iterator[Provider]:
    if request.param == "google":
        store = google.tokens

        def refresh(user: str) -> str:
            return google.issue_refresh_token(google_client, user, [GOOGLE_MAIL])

    else:
        store = microsoft.tokens

        def refresh(user: str) -> str:
            return microsoft.issue_refresh_token(
                microsoft_client, user, ["offline_access", OUTLOOK_SMTP]
            )

    peer = SmtpPeer(tokens=ProviderTokens(store), oauth_errors=request.param).start()
    yield Provider(request.param, store, refresh, peer)
    peer.stop()


async def _oauth_smtp_account(
    db: Any,
    crypto_keys: str,
    provider: Provider,
    refresh_token: str,
    username: str | None = None,
) -> uuid.UUID:
    return await insert_oauth_account(
        db,
        crypto_keys,
        provider.name,
        refresh_token,
        ADDRESS,
        kind="smtp",
        smtp_port=provider.peer.port,
        smtp_username=username,
    )


async def _commanded(db: Any, rabbit_url: str, account: uuid.UUID, count: int) -> list[int]:
    campaign = await insert_campaign(db)
    recipients: list[str | tuple[str, str | None]] = [
        f"x{i}-{uuid.uuid4().hex[:6]}@example.org" for i in range(count)
    ]
    ids = await insert_messages(db, campaign, account, recipients)
    await publish_batch(rabbit_url, account, ids)
    return ids


async def test_an_oauth_account_logs_in_with_xoauth2_and_sends(
    db: Any, crypto_keys: str, rabbit_url: str, provider: Provider, oauth_settings: Settings
) -> None:
    account = await _oauth_smtp_account(db, crypto_keys, provider, provider.refresh_token())
    async with running_sender(oauth_settings):
        ids = await _commanded(db, rabbit_url, account, 3)
        await wait_for(lambda: settled(db, ids))

    # One session, logged in once as the From address (no SMTP username set), three messages.
    assert provider.handler.logins == [ADDRESS]
    assert provider.handler.refused_tokens == []
    assert len(provider.handler.received) == 3
    assert await attempts_of(db, ids) == [1, 1, 1]


async def test_a_refused_token_is_forgotten_and_the_login_tried_once_more_with_a_fresh_one(
    db: Any,
    crypto_keys: str,
    rabbit_url: str,
    provider: Provider,
    oauth_settings: Settings,
) -> None:
    account = await _oauth_smtp_account(db, crypto_keys, provider, provider.refresh_token())
    # The fleet's cached token is revoked at the provider before its expiry.
    box = SecretBox(crypto_keys.split(","))
    cached = await AccessTokens(oauth_settings.oauth, box).access_token(db, account)
    assert provider.store.revoke(cached)
    async with running_sender(oauth_settings):
        ids = await _commanded(db, rabbit_url, account, 1)
        await wait_for(lambda: settled(db, ids))

    assert provider.handler.refused_tokens == [cached]
    assert provider.handler.logins == [ADDRESS]
    assert await attempts_of(db, ids) == [1]
    refreshes = [r for r in provider.store.requests if r.grant_type == "refresh_token"]
    assert len(refreshes) == 2


async def test_a_revoked_grant_pauses_the_account_for_consent_and_burns_nothing(
    db: Any,
    crypto_keys: str,
    rabbit_url: str,
    provider: Provider,
    oauth_settings: Settings,
) -> None:
    refresh = provider.refresh_token()
    account = await _oauth_smtp_account(db, crypto_keys, provider, refresh)
    provider.store.revoke(refresh)
    async with running_sender(oauth_settings):
        ids = await _commanded(db, rabbit_url, account, 3)
        await wait_for(lambda: settled(db, ids, "queued"))

    state = await account_state(db, account)
    assert state["status"] == "paused"
    assert state["status_reason"].startswith("consent needed: ")
    assert await attempts_of(db, ids) == [0, 0, 0]
    assert provider.handler.received == []


async def test_a_fresh_token_refused_too_pauses_the_account_and_burns_nothing(
    db: Any,
    crypto_keys: str,
    rabbit_url: str,
    provider: Provider,
    oauth_settings: Settings,
) -> None:
    # The SMTP username is not the mailbox the tokens were issued for: every token is refused.
    account = await _oauth_smtp_account(
        db, crypto_keys, provider, provider.refresh_token(), username="other@fleet.example.com"
    )
    async with running_sender(oauth_settings):
        ids = await _commanded(db, rabbit_url, account, 2)
        await wait_for(lambda: settled(db, ids, "queued"))

    state = await account_state(db, account)
    assert state["status"] == "paused"
    assert "SMTP authentication failed: 535" in state["status_reason"]
    refused = provider.handler.refused_tokens
    assert len(refused) == 2
    assert refused[0] != refused[1]  # the second login had a fresh token
    assert await attempts_of(db, ids) == [0, 0]
    assert provider.handler.received == []


async def test_a_token_endpoint_out_of_reach_holds_the_account_and_burns_nothing(
    db: Any,
    crypto_keys: str,
    rabbit_url: str,
    google: GoogleDouble,
    google_client: OAuthClient,
    oauth_settings: Settings,
) -> None:
    unreachable = oauth_settings.model_copy(deep=True)
    unreachable.oauth.google = OAuthClientSettings(
        client_id=google_client.client_id,
        token_uri=f"http://127.0.0.1:{_free_port()}/token",
        scopes=GOOGLE_MAIL,
    )
    peer = SmtpPeer(tokens=ProviderTokens(google.tokens)).start()
    try:
        refresh = google.issue_refresh_token(google_client, ADDRESS, [GOOGLE_MAIL])
        account = await insert_oauth_account(
            db, crypto_keys, "google", refresh, ADDRESS, kind="smtp", smtp_port=peer.port
        )
        async with running_sender(unreachable):
            ids = await _commanded(db, rabbit_url, account, 2)
            state = await wait_for(lambda: held_state(db, account))
    finally:
        peer.stop()

    assert await statuses(db, ids) == ["assigned", "assigned"]
    assert "OAuth2 access token not refreshed" in state["held_reason"]
    assert state["status"] == "active"
    assert await attempts_of(db, ids) == [0, 0]
    assert peer.handler.received == []
