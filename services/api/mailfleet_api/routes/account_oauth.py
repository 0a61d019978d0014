"""OAuth2 credentials of accounts: imported, or granted through a consent started here."""

from uuid import UUID

from fastapi import APIRouter
from mailfleet_common import oauth
from mailfleet_common.db import Conn
from mailfleet_common.settings import OAuthClientSettings

from mailfleet_api import consent, queries, schemas
from mailfleet_api.deps import Admin, DbConn, SecretBoxDep, SettingsDep
from mailfleet_api.errors import ConflictError, InvalidError, NotFoundError
from mailfleet_api.queries import consents as consent_queries
from mailfleet_api.queries.accounts import AccountRow
from mailfleet_api.schemas.oauth import ConsentStart, ConsentStarted, OAuthImport
from mailfleet_api.settings import Settings

router = APIRouter(prefix="/api/admin/accounts", tags=["accounts"])


def account_mailbox(account: AccountRow) -> str:
    """The mailbox an OAuth2 grant must be for: the SMTP login, or the sending address."""
    if account.kind == "smtp" and account.smtp_username and "@" in account.smtp_username:
        return account.smtp_username
    return account.from_email


def check_provider(account: AccountRow, provider: str) -> None:
    """422 for a provider that cannot serve the account."""
    if account.kind == "gmail-api" and provider != "google":
        raise InvalidError("a gmail-api account is Google's: provider must be google")


async def _lock_connectable(conn: Conn, account_id: UUID) -> AccountRow:
    account = await queries.lock_account(conn, account_id)
    if account is None:
        raise NotFoundError(f"no account {account_id}")
    if account.status == "archived":
        raise ConflictError("the account is archived")
    return account


@router.post("/{account_id}/oauth")
async def import_oauth_credentials(
    account_id: UUID, body: OAuthImport, conn: DbConn, box: SecretBoxDep, _: Admin
) -> schemas.Account:
    """Store the account's OAuth2 credentials (encrypted, never shown again); replaces any.

    An account paused for consent ("consent needed") becomes active again.
    """
    if body.service_account_key is not None:
        try:
            oauth.check_service_account_key(body.service_account_key)
        except ValueError as exc:
            raise InvalidError(str(exc)) from exc
    async with conn.transaction():
        current = await _lock_connectable(conn, account_id)
        check_provider(current, body.provider)
        if body.service_account_key is not None and body.subject is not None:
            await oauth.import_service_account(
                conn, box, account_id, body.service_account_key, body.subject
            )
        elif body.refresh_token is not None:
            await oauth.import_refresh_token(
                conn, box, account_id, body.provider, body.refresh_token.get_secret_value()
            )
        await queries.resume_after_consent(conn, account_id, "OAuth2 credentials imported")
    account = await queries.fetch_account(conn, account_id)
    assert account is not None  # noqa: S101 - accounts are archived, never deleted
    return account


def consent_client(settings: Settings, provider: str) -> tuple[OAuthClientSettings, str]:
    """The provider's OAuth client and the redirect URI; 409 naming what is not configured."""
    client: OAuthClientSettings = getattr(settings.oauth, provider)
    name = f"MAILFLEET_OAUTH__{provider.upper()}"
    missing = [f"{name}__{field.upper()}" for field in ("client_id", "auth_uri")
               if not getattr(client, field)]  # fmt: skip
    if not settings.oauth_redirect_uri:
        missing.append("MAILFLEET_HTTP__PUBLIC_URL (or MAILFLEET_OAUTH__REDIRECT_URI)")
    if missing:
        raise ConflictError(f"OAuth consent is not configured: set {', '.join(missing)}")
    return client, settings.oauth_redirect_uri


@router.post("/{account_id}/oauth/consent")
async def start_oauth_consent(
    account_id: UUID,
    body: ConsentStart,
    conn: DbConn,
    box: SecretBoxDep,
    settings: SettingsDep,
    principal: Admin,
) -> ConsentStarted:
    """A consent URL for the mailbox's owner: consenting there connects the account (OAuth2).

    Single use, valid for MAILFLEET_CONSENT__TTL_S (15 minutes). The refresh token the
    provider grants replaces any credentials, and an account paused for consent is resumed.
    """
    client, redirect_uri = consent_client(settings, body.provider)
    async with conn.transaction():
        account = await _lock_connectable(conn, account_id)
        check_provider(account, body.provider)
        login_hint = body.login_hint or account_mailbox(account)
        started = consent.start(body.provider, client, redirect_uri, login_hint)
        expires_at = await consent_queries.insert_consent(
            conn,
            consent.state_digest(started.state),
            account_id,
            body.provider,
            login_hint,
            box.encrypt(started.code_verifier),
            principal.user_id,
            settings.consent.ttl_s,
        )
    return ConsentStarted(
        provider=body.provider,
        authorization_url=started.url,
        redirect_uri=redirect_uri,
        expires_at=expires_at,
    )
