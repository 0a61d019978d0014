"""Whether the configured crypto keys can decrypt the secrets stored in the database.

A database outlives the key that encrypted its passwords when it is reached from a second
clone, or after the file holding the key was lost: every account would then fail at its first
message. Decrypting what is stored, rather than keeping a fingerprint of the key, also holds
across key rotation (any configured key may decrypt) and needs nothing stored beside it.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from mailfleet_common.crypto import SecretBox, SecretBoxError
from mailfleet_common.oauth import CONSENT_NEEDED
from mailfleet_common.settings import CryptoSettings

from mailfleet_api.queries.accounts import AccountSecrets, OAuthSecrets


@dataclass(frozen=True, slots=True)
class LockedSecret:
    """An account with a stored password that no configured key decrypts."""

    account_id: UUID
    name: str
    smtp: bool
    imap: bool
    imap_mailbox: str | None  # user@host of the IMAP setting

    @property
    def forgotten_reason(self) -> str:
        """The status_reason of the account once these passwords are deleted."""
        lost = []
        if self.smtp:
            lost.append("its SMTP password")
        if self.imap:
            lost.append(f"its IMAP setting ({self.imap_mailbox})")
        return (
            f"{' and '.join(lost)} deleted: encrypted with a crypto key no longer configured; "
            "give it again (PATCH /api/admin/accounts/{id}), then resume the account"
        )


@dataclass(frozen=True, slots=True)
class LockedEndpoint:
    """A webhook endpoint whose signing secret no configured key decrypts."""

    endpoint_id: UUID
    url: str

    forgotten_reason = (
        "its signing secret was deleted: encrypted with a crypto key no longer configured; "
        "rotate it (POST /api/webhooks/endpoints/{id}/rotate-secret), then enable it"
    )


@dataclass(frozen=True, slots=True)
class LockedOAuth:
    """An OAuth2 account whose credentials, or cached access token, no configured key decrypts.

    A lost access token is only a cache: it is dropped and the next use refreshes. Lost
    credentials (refresh token or service-account key) need a new consent or import.
    """

    account_id: UUID
    name: str
    credentials: bool
    access_token: bool

    forgotten_reason = (
        f"{CONSENT_NEEDED}: its OAuth2 credentials were deleted: encrypted with a crypto key no "
        "longer configured; connect the account again (POST /api/admin/accounts/{id}/oauth/"
        "consent) or import them (POST /api/admin/accounts/{id}/oauth)"
    )


@dataclass(frozen=True, slots=True)
class KeyCheck:
    accounts_with_secrets: int
    locked: list[LockedSecret]
    key_error: str | None  # no key, or a malformed one
    endpoints_with_secrets: int = 0
    locked_endpoints: list[LockedEndpoint] = field(default_factory=list)
    oauth_accounts: int = 0
    locked_oauth: list[LockedOAuth] = field(default_factory=list)
    pending_consents: int = 0
    # The state hashes of consents under way whose PKCE verifier no key decrypts.
    locked_consents: list[bytes] = field(default_factory=list)

    @property
    def all_decrypted(self) -> bool:
        return not (
            self.locked or self.locked_endpoints or self.locked_oauth or self.locked_consents
        )


def check_secrets(
    settings: CryptoSettings,
    accounts: Sequence[AccountSecrets],
    endpoint_rows: Sequence[Any] = (),
    oauth_rows: Sequence[OAuthSecrets] = (),
    verifiers: Sequence[tuple[bytes, bytes]] = (),
) -> KeyCheck:
    """Try every stored secret: passwords, webhook and OAuth2 secrets, consent verifiers.

    Endpoint rows as webhooks.fetch_endpoint_secrets returns them, verifiers as
    consents.fetch_verifiers does.
    """
    box: SecretBox | None = None
    key_error = None
    try:
        box = SecretBox.from_settings(settings)
    except SecretBoxError as exc:
        key_error = str(exc)

    def locked(token: bytes | None) -> bool:
        if token is None:
            return False
        if box is None:
            return True
        try:
            box.decrypt(bytes(token))
        except SecretBoxError:
            return True
        return False

    found = []
    for account in accounts:
        smtp, imap = locked(account.smtp_password_enc), locked(account.imap_password_enc)
        if smtp or imap:
            mailbox = f"{account.imap_username}@{account.imap_host}" if imap else None
            found.append(LockedSecret(account.id, account.name, smtp, imap, mailbox))
    endpoints = [
        LockedEndpoint(row["id"], row["url"]) for row in endpoint_rows if locked(row["secret_enc"])
    ]
    oauth = []
    for row in oauth_rows:
        credentials = locked(row.refresh_token_enc) or locked(row.service_account_key_enc)
        access = locked(row.access_token_enc)
        if credentials or access:
            oauth.append(LockedOAuth(row.account_id, row.name, credentials, access))
    consents = [state_hash for state_hash, verifier in verifiers if locked(verifier)]
    return KeyCheck(
        len(accounts),
        found,
        key_error,
        len(endpoint_rows),
        endpoints,
        len(oauth_rows),
        oauth,
        len(verifiers),
        consents,
    )


def explain(check: KeyCheck) -> str:
    """What is wrong and the two ways out, for an operator."""
    names = ", ".join(repr(s.name) for s in check.locked[:5])
    more = f" and {len(check.locked) - 5} more" if len(check.locked) > 5 else ""
    smtp = sum(s.smtp for s in check.locked)
    imap = sum(s.imap for s in check.locked)
    cause = (
        f"MAILFLEET_CRYPTO__KEYS is unusable ({check.key_error})"
        if check.key_error
        else "MAILFLEET_CRYPTO__KEYS has none of the keys they were encrypted with"
    )
    endpoints = ""
    if check.locked_endpoints:
        urls = ", ".join(e.url for e in check.locked_endpoints[:5])
        endpoints = (
            f"the signing secrets of {len(check.locked_endpoints)} of "
            f"{check.endpoints_with_secrets} webhook endpoints cannot be decrypted: {urls}.\n"
        )
    oauth = ""
    if check.locked_oauth:
        lost = ", ".join(repr(o.name) for o in check.locked_oauth if o.credentials) or "none"
        oauth += (
            f"the OAuth2 secrets of {len(check.locked_oauth)} of {check.oauth_accounts} OAuth2 "
            f"accounts cannot be decrypted; credentials lost: {lost} (the others only a "
            "cached access token, refreshed once dropped).\n"
        )
    if check.locked_consents:
        oauth += (
            f"{len(check.locked_consents)} consents under way cannot be finished (their PKCE "
            "verifier cannot be decrypted).\n"
        )
    passwords = ""
    if check.locked:
        passwords = (
            f"the stored passwords of {len(check.locked)} of {check.accounts_with_secrets} "
            f"accounts cannot be decrypted (SMTP: {smtp}, IMAP: {imap}): {names}{more}.\n"
        )
    return (
        f"{passwords}{endpoints}{oauth}"
        f"{cause}: this database was set up with another key (another clone's, or one since "
        "lost). Every one of these accounts would be paused at its first message.\n"
        "Either:\n"
        "  - configure that key again: put it in MAILFLEET_CRYPTO__KEYS (comma-separated, "
        "newest first; `make up` keeps it in .run/env), then run this check again;\n"
        "  - or give these passwords up: `mailfleet check-keys --forget` deletes them (an IMAP "
        "setting with its password) and pauses the accounts; give each again (PATCH "
        "/api/admin/accounts/{id}) and resume them. It deletes lost webhook secrets too and "
        "disables those endpoints: rotate each secret, then enable the endpoint. Lost OAuth2 "
        "credentials are deleted and their accounts paused for consent: connect them again "
        "(they resume); lost access tokens and consents under way are dropped."
    )
