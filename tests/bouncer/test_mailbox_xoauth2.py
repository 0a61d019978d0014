"""The bouncer reading an OAuth2 account's IMAP mailbox by XOAUTH2 (real Dovecot with an oauth2
passdb, the Microsoft double as the account's token endpoint): reads, refusals, a lost grant.

Dovecot accepts the tokens of ``oauth_tokens``; tokens the Microsoft double issues on refresh
are unknown to it, so a refreshed token is refused, as a token without the IMAP scope would be.
"""

import smtplib
import time
from uuid import UUID

import pytest
from aioimaplib import IMAP4
from mailfleet_bouncer.imap import Mailbox as ImapMailbox
from mailfleet_bouncer.imap import TokenRefusedError as ImapTokenRefusedError
from mailfleet_bouncer.replica import BouncerReplica
from mailfleet_bouncer.settings import Settings
from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import Conn
from mailfleet_common.messages import AccountPaused
from mailfleet_common.settings import OAuthClientSettings, OAuthSettings
from mailfleet_common.topology import ACCOUNT_PAUSED_KEY
from pydantic import SecretStr

from tests.bouncer import rows
from tests.bouncer.servers import Dovecot, Mailbox
from tests.bouncer.test_mailbox import Published, bouncer_settings
from tests.doubles.microsoft import MicrosoftDouble
from tests.doubles.oauth import OAuthClient
from tests.oauth_tokens import OUTLOOK_SCOPE, TokenRegistry

TENANT = "contoso.onmicrosoft.com"
IMAP_TIMEOUT_S = 5.0


@pytest.fixture
def client(microsoft: MicrosoftDouble) -> OAuthClient:
    return microsoft.add_client(TENANT)


@pytest.fixture
def settings(
    database_dsn: str,
    rabbit_url: str,
    crypto_keys: str,
    tracking_keys: str,
    microsoft: MicrosoftDouble,
    client: OAuthClient,
) -> Settings:
    settings = bouncer_settings(
        database_dsn, rabbit_url, crypto_keys, tracking_keys, imap_timeout_s=IMAP_TIMEOUT_S
    )
    settings.oauth = OAuthSettings(
        microsoft=OAuthClientSettings(
            client_id=client.client_id,
            client_secret=SecretStr(client.secret or ""),
            token_uri=microsoft.token_uri(TENANT),
            scopes=f"offline_access {OUTLOOK_SCOPE}",
        )
    )
    return settings


@pytest.fixture
def oauth_mailbox(oauth_dovecot: Dovecot) -> Mailbox:
    return oauth_dovecot.create_mailbox("oauth")


async def xoauth2_account(
    db: Conn,
    box: SecretBox,
    microsoft: MicrosoftDouble,
    client: OAuthClient,
    mailbox: Mailbox,
    access_token: str,
) -> tuple[UUID, str]:
    """The account, and its refresh token at the Microsoft double."""
    scopes = ["offline_access", *OUTLOOK_SCOPE.split()]
    refresh = microsoft.issue_refresh_token(client, mailbox.address, scopes)
    account = await rows.insert_xoauth2_account(db, box, mailbox, refresh, access_token)
    return account, refresh


def deliver(dovecot: Dovecot, address: str, raw: bytes) -> None:
    with smtplib.LMTP(dovecot.host, dovecot.lmtp_port, timeout=10) as lmtp:
        lmtp.sendmail("mailer-daemon@mta.example.net", [address], raw)


async def poll_refused(replica: BouncerReplica, account: UUID) -> None:
    """A poll that reads nothing, and is over well before the IMAP timeout.

    aioimaplib's own xoauth2() would wait the timeout out on the server's error challenge.
    """
    started = time.monotonic()
    assert await replica.poll(account) == 0
    assert time.monotonic() - started < IMAP_TIMEOUT_S


def refreshes(microsoft: MicrosoftDouble) -> int:
    return len([r for r in microsoft.tokens.requests if r.grant_type == "refresh_token"])


async def test_a_dsn_is_read_with_the_accounts_access_token(
    db: Conn,
    box: SecretBox,
    microsoft: MicrosoftDouble,
    client: OAuthClient,
    oauth_dovecot: Dovecot,
    oauth_mailbox: Mailbox,
    oauth_tokens: TokenRegistry,
    replica: BouncerReplica,
) -> None:
    token = oauth_tokens.issue(oauth_mailbox.address, scope=OUTLOOK_SCOPE)
    account, _ = await xoauth2_account(db, box, microsoft, client, oauth_mailbox, token)
    campaign = await rows.insert_campaign(db)
    [(message_id, header)] = await rows.insert_sent(db, campaign, account, ["gone@example.net"])
    deliver(
        oauth_dovecot,
        oauth_mailbox.address,
        rows.dsn("gone@example.net", header, sender=oauth_mailbox.address),
    )

    assert await replica.poll(account) == 1

    assert await db.fetchval("SELECT bounce FROM messages WHERE id = $1", message_id) == "hard"
    assert await db.fetchval("SELECT last_error FROM mailbox_checkpoints") is None
    assert refreshes(microsoft) == 0
    assert await replica.poll(account) == 0


async def test_a_refused_token_is_replaced_once_then_the_error_is_recorded(
    db: Conn,
    box: SecretBox,
    microsoft: MicrosoftDouble,
    client: OAuthClient,
    oauth_mailbox: Mailbox,
    oauth_tokens: TokenRegistry,
    replica: BouncerReplica,
) -> None:
    token = oauth_tokens.issue(oauth_mailbox.address, scope=OUTLOOK_SCOPE)
    account, _ = await xoauth2_account(db, box, microsoft, client, oauth_mailbox, token)
    oauth_tokens.revoke(token)

    await poll_refused(replica, account)

    assert refreshes(microsoft) == 1
    error = await db.fetchval("SELECT last_error FROM mailbox_checkpoints")
    assert "AUTHENTICATIONFAILED" in error, error
    assert await db.fetchval("SELECT status FROM accounts") == "active"


async def test_a_revoked_grant_pauses_the_account_without_hanging(
    db: Conn,
    box: SecretBox,
    microsoft: MicrosoftDouble,
    client: OAuthClient,
    oauth_mailbox: Mailbox,
    oauth_tokens: TokenRegistry,
    replica: BouncerReplica,
    published: Published,
) -> None:
    token = oauth_tokens.issue(oauth_mailbox.address, scope=OUTLOOK_SCOPE)
    account, refresh = await xoauth2_account(db, box, microsoft, client, oauth_mailbox, token)
    oauth_tokens.revoke(token)
    microsoft.revoke_refresh_token(refresh)

    await poll_refused(replica, account)

    row = await db.fetchrow("SELECT status, status_reason FROM accounts WHERE id = $1", account)
    assert row["status"] == "paused"
    assert row["status_reason"].startswith("consent needed: ")
    [(key, event)] = published.events
    assert key == ACCOUNT_PAUSED_KEY
    assert isinstance(event, AccountPaused)
    assert event.account_id == account
    await replica.rebalance()
    assert replica.owned == frozenset()


@pytest.mark.parametrize("sasl_ir", [True, False], ids=["initial response", "after a +"])
async def test_xoauth2_logs_in_or_is_refused_with_and_without_sasl_ir(
    sasl_ir: bool, oauth_dovecot: Dovecot, oauth_mailbox: Mailbox, oauth_tokens: TokenRegistry
) -> None:
    live = oauth_tokens.issue(oauth_mailbox.address, scope=OUTLOOK_SCOPE)
    revoked = oauth_tokens.issue(oauth_mailbox.address, scope=OUTLOOK_SCOPE)
    oauth_tokens.revoke(revoked)
    for token, accepted in [(revoked, False), (live, True)]:
        client = IMAP4(oauth_dovecot.host, oauth_dovecot.imap_port, timeout=IMAP_TIMEOUT_S)
        await client.wait_hello_from_server()
        if not sasl_ir:  # as with a server that does not offer it
            client.protocol.capabilities.discard("SASL-IR")
        mailbox = ImapMailbox(client, IMAP_TIMEOUT_S)
        try:
            if accepted:
                await mailbox._xoauth2(oauth_mailbox.address, token)
                assert (await mailbox.select("INBOX")).uidvalidity > 0
            else:
                with pytest.raises(ImapTokenRefusedError, match="AUTHENTICATIONFAILED"):
                    await mailbox._xoauth2(oauth_mailbox.address, token)
        finally:
            await mailbox.close()
