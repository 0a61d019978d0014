"""Whether the configured crypto keys can decrypt the passwords stored in the database.

A database outlives the key that encrypted its passwords when it is reached from a second
clone, or after the file holding the key was lost: every account would then fail at its first
message. Decrypting what is stored, rather than keeping a fingerprint of the key, also holds
across key rotation (any configured key may decrypt) and needs nothing stored beside it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from mailfleet_common.crypto import SecretBox, SecretBoxError
from mailfleet_common.settings import CryptoSettings

from mailfleet_api.queries.accounts import AccountSecrets


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
class KeyCheck:
    accounts_with_secrets: int
    locked: list[LockedSecret]
    key_error: str | None  # no key, or a malformed one


def check_secrets(settings: CryptoSettings, accounts: Sequence[AccountSecrets]) -> KeyCheck:
    """Try each stored password of these accounts."""
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
            box.decrypt(token)
        except SecretBoxError:
            return True
        return False

    found = []
    for account in accounts:
        smtp, imap = locked(account.smtp_password_enc), locked(account.imap_password_enc)
        if smtp or imap:
            mailbox = f"{account.imap_username}@{account.imap_host}" if imap else None
            found.append(LockedSecret(account.id, account.name, smtp, imap, mailbox))
    return KeyCheck(len(accounts), found, key_error)


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
    return (
        f"the stored passwords of {len(check.locked)} of {check.accounts_with_secrets} accounts "
        f"cannot be decrypted (SMTP: {smtp}, IMAP: {imap}): {names}{more}.\n"
        f"{cause}: this database was set up with another key (another clone's, or one since "
        "lost). Every one of these accounts would be paused at its first message.\n"
        "Either:\n"
        "  - configure that key again: put it in MAILFLEET_CRYPTO__KEYS (comma-separated, "
        "newest first; `make up` keeps it in .run/env), then run this check again;\n"
        "  - or give these passwords up: `mailfleet check-keys --forget` deletes them (an IMAP "
        "setting with its password) and pauses the accounts; give each again (PATCH "
        "/api/admin/accounts/{id}) and resume them."
    )
