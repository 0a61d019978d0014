"""OAuth2 access tokens of accounts: cached in the database, one refresh per account fleet-wide.

An account's credentials are a user's refresh token (Google or Microsoft) or a Google
service-account key that impersonates one mailbox (domain-wide delegation). The access token
they yield is stored encrypted in `account_oauth`, so every replica uses the same one. A token
within `refresh_margin_s` of its expiry is refreshed by whoever needs it first, holding the
account's `account_oauth` row lock for the round trip: the others wait on the lock, then read
the new token instead of asking the provider again.

The token requests are made by authlib (refresh-token grant) and google-auth (JWT-bearer grant
of a service account), both synchronous, in a worker thread: a refresh happens about once an
hour per account. authlib's httpx client is left out: it warns that httpx support is deprecated.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg
import asyncpg.pool
from authlib.integrations.base_client import OAuthError as AuthlibOAuthError
from authlib.integrations.requests_client import OAuth2Session
from google.auth.exceptions import GoogleAuthError, RefreshError
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import service_account

from mailfleet_common import pausing
from mailfleet_common.crypto import SecretBox
from mailfleet_common.errors import MailfleetError
from mailfleet_common.settings import OAuthClientSettings, OAuthSettings

Conn: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)

PROVIDERS = ("google", "microsoft")
CONSENT_NEEDED = "consent needed"
# What a token endpoint answers when the grant itself is gone (RFC 6749 5.2): the user revoked
# consent, the token expired or was rotated away, or (service accounts) the Workspace admin
# withdrew domain-wide delegation or the key was deleted. Only a new grant helps.
_LOST_GRANT = frozenset({"invalid_grant", "unauthorized_client"})


class OAuthTokenError(MailfleetError):
    """No access token could be had for an account."""


class NotAnOAuthAccountError(OAuthTokenError):
    """The account has no OAuth credentials."""


class ConsentNeededError(OAuthTokenError):
    """The provider refused the account's grant: someone must consent (or import) again."""

    def __init__(self, account_id: UUID, detail: str) -> None:
        super().__init__(f"account {account_id}: {CONSENT_NEEDED} ({detail})")
        self.account_id = account_id
        self.detail = detail

    @property
    def reason(self) -> str:
        """The account's status_reason once paused for it: the provider's error, first line.

        Microsoft's descriptions go on with trace and correlation ids and a timestamp, one per
        line; they stay in the log.
        """
        first = self.detail.strip().splitlines()[0] if self.detail.strip() else self.detail
        return f"{CONSENT_NEEDED}: {first}"[:500]


class _GrantRefusedError(Exception):
    """The token endpoint refused the grant itself (before it is known whose it is)."""


class TokenRefreshError(OAuthTokenError):
    """The provider could not be asked, or refused the client: try again later."""


@dataclass(frozen=True, slots=True)
class _Grant:
    access_token: str
    expires_in: float
    refresh_token: str | None  # a rotated refresh token to keep (Microsoft), or None


class AccessTokens:
    """Hands out accounts' access tokens, refreshing them as they near expiry."""

    def __init__(self, settings: OAuthSettings, box: SecretBox) -> None:
        self._settings = settings
        self._box = box

    async def access_token(self, conn: Conn, account_id: UUID) -> str:
        """A token valid for at least refresh_margin_s more; refreshed first if it is not.

        Raises ConsentNeededError when the provider refused the grant (the account is marked so;
        pause it with pause_for_consent), TokenRefreshError when the provider could not
        answer, NotAnOAuthAccountError when there is nothing to refresh with.
        """
        margin = self._settings.refresh_margin_s
        cached = await conn.fetchrow(_CACHED, account_id, margin)
        if cached is None:
            raise NotAnOAuthAccountError(f"account {account_id} has no OAuth credentials")
        if cached["fresh"]:
            return self._box.decrypt(bytes(cached["access_token_enc"]))
        lost: ConsentNeededError | None = None
        async with conn.transaction():
            # Whoever holds the lock refreshes; the others wait here and find a fresh token.
            row = await conn.fetchrow(_LOCKED, account_id, margin)
            if row is None:
                raise NotAnOAuthAccountError(f"account {account_id} has no OAuth credentials")
            if row["fresh"]:
                return self._box.decrypt(bytes(row["access_token_enc"]))
            if row["consent"] == "needed":
                raise ConsentNeededError(account_id, "the grant was refused before")
            try:
                grant = await self._refresh(row)
            except _GrantRefusedError as exc:
                lost = ConsentNeededError(account_id, str(exc))
                await conn.execute(_MARK_CONSENT_NEEDED, account_id)
            else:
                await conn.execute(
                    _STORE_GRANT,
                    account_id,
                    self._box.encrypt(grant.access_token),
                    grant.expires_in,
                    None if grant.refresh_token is None else self._box.encrypt(grant.refresh_token),
                )
                return grant.access_token
        raise lost

    async def forget(self, conn: Conn, account_id: UUID, token: str) -> bool:
        """Drop ``token`` from the cache: the provider refused it before its expiry (revoked).

        The next access_token() refreshes, so a caller may retry once with a new token. Only
        this very token is dropped: if another replica has already replaced it, the new one
        stays. Returns whether it was dropped. A caller whose fresh token is refused too must
        not loop: the grant itself is at fault (pause the account).
        """
        async with conn.transaction():
            row = await conn.fetchrow(_LOCKED_ACCESS, account_id)
            if row is None or row["access_token_enc"] is None:
                return False
            if self._box.decrypt(bytes(row["access_token_enc"])) != token:
                return False
            await conn.execute(_DROP_ACCESS, account_id)
            return True

    async def _refresh(self, row: asyncpg.Record) -> _Grant:
        client: OAuthClientSettings = getattr(self._settings, row["provider"])
        timeout = self._settings.timeout_s
        if row["service_account_key_enc"] is not None:
            key = json.loads(self._box.decrypt(bytes(row["service_account_key_enc"])))
            return await asyncio.to_thread(_delegated_token, client, key, row["subject"], timeout)
        refresh_token = self._box.decrypt(bytes(row["refresh_token_enc"]))
        # Microsoft wants the scopes again on refresh; Google keeps the granted ones.
        scope = client.scopes if row["provider"] == "microsoft" else None
        return await asyncio.to_thread(_refreshed_token, client, refresh_token, scope, timeout)


def _refreshed_token(
    client: OAuthClientSettings, refresh_token: str, scope: str | None, timeout: float
) -> _Grant:
    """The refresh-token grant (RFC 6749 section 6)."""
    session = OAuth2Session(
        client.client_id,
        client.client_secret.get_secret_value(),
        token_endpoint_auth_method="client_secret_post",  # noqa: S106 - a method name
    )
    extra: dict[str, Any] = {} if scope is None else {"scope": scope}
    try:
        with session:
            token = session.refresh_token(
                client.token_uri, refresh_token=refresh_token, timeout=timeout, **extra
            )
    except AuthlibOAuthError as exc:
        detail = f"{exc.error}: {exc.description}"
        if exc.error in _LOST_GRANT:
            raise _GrantRefusedError(detail) from exc
        raise TokenRefreshError(detail) from exc
    except Exception as exc:  # network errors, or a body that is not a token answer
        raise TokenRefreshError(f"token request failed: {exc}") from exc
    rotated = token.get("refresh_token")
    return _Grant(
        token["access_token"],
        float(token.get("expires_in", 3600)),
        rotated if rotated and rotated != refresh_token else None,
    )


class _TimedRequest(GoogleRequest):
    """google-auth's requests transport with a bound on each request (its default is 120 s)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = self._timeout
        return super().__call__(*args, **kwargs)  # type: ignore[no-untyped-call]


def _delegated_token(
    client: OAuthClientSettings, key: dict[str, str], subject: str, timeout: float
) -> _Grant:
    """The JWT-bearer grant of a service account acting as `subject` (domain-wide delegation)."""
    # The key file names Google's token URI; the configured one wins (and is what the
    # assertion's audience must be).
    info = dict(key, token_uri=client.token_uri)
    try:
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=client.scopes.split(), subject=subject
        )
        credentials.refresh(_TimedRequest(timeout))
    except RefreshError as exc:
        body = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        detail = str(exc.args[0]) if exc.args else str(exc)
        if body.get("error") in _LOST_GRANT:
            raise _GrantRefusedError(detail) from exc
        raise TokenRefreshError(detail) from exc
    except (GoogleAuthError, ValueError) as exc:
        raise TokenRefreshError(f"token request failed: {exc}") from exc
    expires_in = 3600.0
    if credentials.expiry is not None:
        # google-auth keeps the expiry as a naive UTC datetime.
        expires_in = credentials.expiry.replace(tzinfo=UTC).timestamp() - time.time()
    return _Grant(credentials.token, expires_in, None)


async def pause_for_consent(
    conn: Conn, error: ConsentNeededError, source: str, message_id: int | None = None
) -> datetime | None:
    """Pause the account whose grant was refused and give its messages back to the queue.

    As the sender does for an SMTP authentication failure: the reason is "consent needed: ...",
    the 'account-paused' event is written with the pause, and the caller publishes the
    AccountPaused when this returns the instant of the pause (None: it was not active).
    """
    return await pausing.requeue_and_pause_account(
        conn, error.account_id, error.reason, source, message_id=message_id
    )


async def import_refresh_token(
    conn: Conn, box: SecretBox, account_id: UUID, provider: str, refresh_token: str
) -> None:
    """Make the account an OAuth2 one with this refresh token (consent granted, no cache)."""
    await _store_credentials(conn, account_id, provider, box.encrypt(refresh_token), None, None)


def check_service_account_key(key: dict[str, Any]) -> None:
    """Raise ValueError unless google-auth can sign with this service-account key."""
    try:
        service_account.Credentials.from_service_account_info(key)  # type: ignore[no-untyped-call]
    except (ValueError, KeyError) as exc:
        raise ValueError("the service-account key's private_key is not a usable key") from exc


async def import_service_account(
    conn: Conn, box: SecretBox, account_id: UUID, key: dict[str, Any], subject: str
) -> None:
    """Make the account an OAuth2 one acting as `subject` with this Google service-account key."""
    await _store_credentials(
        conn, account_id, "google", None, box.encrypt(json.dumps(key)), subject
    )


async def _store_credentials(
    conn: Conn,
    account_id: UUID,
    provider: str,
    refresh_token_enc: bytes | None,
    key_enc: bytes | None,
    subject: str | None,
) -> None:
    async with conn.transaction():
        await conn.execute(
            """
            INSERT INTO account_oauth AS o
                (account_id, provider, refresh_token_enc, service_account_key_enc, subject)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (account_id) DO UPDATE
            SET provider = $2, refresh_token_enc = $3, service_account_key_enc = $4,
                subject = $5, consent = 'granted', access_token_enc = NULL,
                access_expires_at = NULL, updated_at = now()
            """,
            account_id,
            provider,
            refresh_token_enc,
            key_enc,
            subject,
        )
        await conn.execute(
            "UPDATE accounts SET auth_kind = 'oauth2', updated_at = now() WHERE id = $1",
            account_id,
        )


async def rotate_oauth_secrets(conn: Conn, box: SecretBox) -> int:
    """Re-encrypt every stored refresh token, service-account key and access token.

    Row-locked, in the caller's transaction; returns how many accounts were rewritten.
    """
    rows = await conn.fetch(
        """
        SELECT account_id, refresh_token_enc, service_account_key_enc, access_token_enc
        FROM account_oauth ORDER BY account_id FOR NO KEY UPDATE
        """
    )

    def rotated(token: bytes | None) -> bytes | None:
        return None if token is None else box.rotate(bytes(token))

    await conn.executemany(
        """
        UPDATE account_oauth
        SET refresh_token_enc = $2, service_account_key_enc = $3, access_token_enc = $4
        WHERE account_id = $1
        """,
        [
            (
                r["account_id"],
                rotated(r["refresh_token_enc"]),
                rotated(r["service_account_key_enc"]),
                rotated(r["access_token_enc"]),
            )
            for r in rows
        ],
    )
    return len(rows)


_COLUMNS = """
    provider, refresh_token_enc, service_account_key_enc, subject, consent, access_token_enc,
    access_expires_at IS NOT NULL
        AND access_expires_at > now() + make_interval(secs => $2) AS fresh
"""
_CACHED = f"SELECT {_COLUMNS} FROM account_oauth WHERE account_id = $1"  # noqa: S608
_LOCKED = f"SELECT {_COLUMNS} FROM account_oauth WHERE account_id = $1 FOR NO KEY UPDATE"  # noqa: S608
# now() is the transaction's start, before the token was asked for: the expiry is conservative.
_STORE_GRANT = """
    UPDATE account_oauth
    SET access_token_enc = $2, access_expires_at = now() + make_interval(secs => $3),
        refresh_token_enc = coalesce($4, refresh_token_enc), refreshed_at = now(),
        updated_at = now()
    WHERE account_id = $1
"""
_MARK_CONSENT_NEEDED = """
    UPDATE account_oauth
    SET consent = 'needed', access_token_enc = NULL, access_expires_at = NULL, updated_at = now()
    WHERE account_id = $1
"""
_LOCKED_ACCESS = """
    SELECT access_token_enc FROM account_oauth WHERE account_id = $1 FOR NO KEY UPDATE
"""
_DROP_ACCESS = """
    UPDATE account_oauth SET access_token_enc = NULL, access_expires_at = NULL, updated_at = now()
    WHERE account_id = $1
"""
