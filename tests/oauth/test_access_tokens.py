"""Access tokens of OAuth2 accounts, against the Google and Microsoft doubles."""

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest
from mailfleet_common.crypto import SecretBox
from mailfleet_common.oauth import (
    AccessTokens,
    ConsentNeededError,
    NotAnOAuthAccountError,
    import_refresh_token,
    import_service_account,
    pause_for_consent,
)
from mailfleet_common.settings import OAuthSettings

from tests.doubles.google import GoogleDouble
from tests.doubles.microsoft import MicrosoftDouble
from tests.doubles.oauth import OAuthClient
from tests.oauth.conftest import MODIFY, SEND, SMTP_SEND, AccountFactory

USER = "alice@example.com"
Conn = asyncpg.Connection


def _refreshes(double: GoogleDouble | MicrosoftDouble) -> list[Any]:
    return [r for r in double.tokens.requests if r.grant_type != "authorization_code"]


@pytest.fixture
async def google_account(
    db: Conn,
    box: SecretBox,
    google: GoogleDouble,
    google_client: OAuthClient,
    make_account: AccountFactory,
) -> uuid.UUID:
    """An account of USER with a refresh token for gmail.send and gmail.modify."""
    account_id = await make_account(USER)
    refresh = google.issue_refresh_token(google_client, USER, [SEND, MODIFY])
    await import_refresh_token(db, box, account_id, "google", refresh)
    return account_id


async def test_a_refreshed_token_is_cached_and_shared_until_near_its_expiry(
    db: Conn, google: GoogleDouble, google_account: uuid.UUID, tokens: AccessTokens
) -> None:
    account_id = google_account
    first = await tokens.access_token(db, account_id)
    assert first.startswith("ya29.")
    assert await tokens.access_token(db, account_id) == first
    assert len(_refreshes(google)) == 1
    row = await db.fetchrow(
        "SELECT access_token_enc, access_expires_at - now() AS left FROM account_oauth"
    )
    assert first.encode() not in bytes(row["access_token_enc"])
    assert 3500 < row["left"].total_seconds() < 3600

    # Still valid, but within the margin: refreshed before use.
    await db.execute("UPDATE account_oauth SET access_expires_at = now() + interval '299 seconds'")
    second = await tokens.access_token(db, account_id)
    assert second != first
    assert len(_refreshes(google)) == 2
    await db.execute("UPDATE account_oauth SET access_expires_at = now() + interval '301 seconds'")
    assert await tokens.access_token(db, account_id) == second
    assert len(_refreshes(google)) == 2


async def test_a_refused_token_is_forgotten_once_and_the_next_call_refreshes(
    db: Conn, google: GoogleDouble, google_account: uuid.UUID, tokens: AccessTokens
) -> None:
    first = await tokens.access_token(db, google_account)
    assert await tokens.forget(db, google_account, first)
    second = await tokens.access_token(db, google_account)
    assert second != first
    assert len(_refreshes(google)) == 2
    # A replica still holding the old token does not drop the new one.
    assert not await tokens.forget(db, google_account, first)
    assert await tokens.access_token(db, google_account) == second
    assert len(_refreshes(google)) == 2


async def test_concurrent_callers_on_two_replicas_cause_one_refresh(
    database_dsn: str,
    box: SecretBox,
    google: GoogleDouble,
    google_account: uuid.UUID,
    oauth_settings: OAuthSettings,
) -> None:
    account_id = google_account
    # Two replicas: each its own pool and its own AccessTokens.
    pools = [await asyncpg.create_pool(database_dsn, min_size=5, max_size=5) for _ in range(2)]
    replicas = [AccessTokens(oauth_settings, box) for _ in range(2)]

    async def caller(n: int) -> str:
        async with pools[n % 2].acquire() as conn:
            return await replicas[n % 2].access_token(conn, account_id)

    try:
        got = await asyncio.gather(*(caller(n) for n in range(20)))
    finally:
        for pool in pools:
            await pool.close()
    assert len(set(got)) == 1
    assert len(_refreshes(google)) == 1


async def test_revoked_consent_pauses_the_account_and_requeues_its_messages(
    db: Conn,
    google: GoogleDouble,
    google_account: uuid.UUID,
    make_account: AccountFactory,
    tokens: AccessTokens,
) -> None:
    account_id = google_account
    other = await make_account("bob@example.com")
    owner = await db.fetchval(
        "INSERT INTO users (email, password_hash, role) VALUES ('o@x.example', 'x', 'admin') "
        "RETURNING id"
    )
    campaign = await db.fetchval(
        "INSERT INTO campaigns (owner_id, name, subject, text_body, status) "
        "VALUES ($1, 'c', 's', 't', 'running') RETURNING id",
        owner,
    )
    for n, account in enumerate([account_id, account_id, other]):
        await db.execute(
            "INSERT INTO messages (campaign_id, email, status, account_id, assigned_at) "
            "VALUES ($1, $2, 'assigned', $3, now())",
            campaign,
            f"r{n}@example.net",
            account,
        )
    google.revoke_user(USER)

    with pytest.raises(ConsentNeededError) as caught:
        await tokens.access_token(db, account_id)
    assert caught.value.account_id == account_id
    assert "invalid_grant" in caught.value.detail
    paused_at = await pause_for_consent(db, caught.value, "sender")
    assert paused_at is not None

    account = await db.fetchrow(
        "SELECT status, status_reason FROM accounts WHERE id = $1", account_id
    )
    assert account["status"] == "paused"
    assert account["status_reason"].startswith("consent needed: invalid_grant")
    event = await db.fetchrow("SELECT type, data FROM events WHERE account_id = $1", account_id)
    assert event["type"] == "account-paused"
    assert json.loads(event["data"])["reason"] == account["status_reason"]
    statuses = await db.fetch("SELECT status, account_id FROM messages ORDER BY id")
    assert [(r["status"], r["account_id"]) for r in statuses] == [
        ("queued", None),
        ("queued", None),
        ("assigned", other),
    ]
    assert await db.fetchval("SELECT consent FROM account_oauth") == "needed"
    # Refused once: the provider is not asked again until a new grant is imported.
    with pytest.raises(ConsentNeededError):
        await tokens.access_token(db, account_id)
    assert len(_refreshes(google)) == 1


@pytest.mark.parametrize("delegated", [True, False])
async def test_a_service_account_gets_tokens_for_its_delegated_mailbox_only(
    db: Conn,
    box: SecretBox,
    google: GoogleDouble,
    make_account: AccountFactory,
    tokens: AccessTokens,
    delegated: bool,
) -> None:
    account_id = await make_account(USER)
    google.add_user(USER)
    key = google.add_service_account(delegated_scopes=[SEND, MODIFY] if delegated else [])
    await import_service_account(db, box, account_id, key, USER)
    stored = bytes(await db.fetchval("SELECT service_account_key_enc FROM account_oauth"))
    assert key["private_key"].encode()[40:80] not in stored
    if not delegated:
        # The Workspace admin has not granted (or has withdrawn) domain-wide delegation.
        with pytest.raises(ConsentNeededError, match="unauthorized_client"):
            await tokens.access_token(db, account_id)
        return

    token = await tokens.access_token(db, account_id)
    assert google.tokens.authenticate(token).user == USER  # type: ignore[union-attr]
    assert [r.grant_type for r in google.tokens.requests] == [
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    ]


async def test_microsoft_rotates_the_refresh_token_and_the_new_one_is_kept(
    db: Conn,
    box: SecretBox,
    microsoft: MicrosoftDouble,
    microsoft_client: OAuthClient,
    make_account: AccountFactory,
    tokens: AccessTokens,
) -> None:
    account_id = await make_account(USER)
    first = microsoft.issue_refresh_token(microsoft_client, USER, ["offline_access", SMTP_SEND])
    await import_refresh_token(db, box, account_id, "microsoft", first)

    token = await tokens.access_token(db, account_id)
    assert microsoft.user_for(token) == USER
    stored = box.decrypt(bytes(await db.fetchval("SELECT refresh_token_enc FROM account_oauth")))
    assert stored != first
    # The first one is spent: refreshing again works only because the new one was kept.
    await db.execute("UPDATE account_oauth SET access_expires_at = now()")
    again = await tokens.access_token(db, account_id)
    assert microsoft.user_for(again) == USER
    assert [r.error for r in microsoft.tokens.requests] == [None, None]

    microsoft.revoke_user(USER)
    await db.execute("UPDATE account_oauth SET access_expires_at = now()")
    with pytest.raises(ConsentNeededError, match="AADSTS"):
        await tokens.access_token(db, account_id)


async def test_an_account_without_oauth_credentials_has_no_token(
    db: Conn, make_account: AccountFactory, tokens: AccessTokens
) -> None:
    account_id = await make_account()
    with pytest.raises(NotAnOAuthAccountError):
        await tokens.access_token(db, account_id)
