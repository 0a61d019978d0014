"""Sender accounts: SMTP and IMAP settings, tags, today's usage."""

from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

from mailfleet_api.schemas.common import (
    AccountStatus,
    Body,
    CursorPage,
    EmailAddress,
    Name,
    SettableAccountStatus,
    SmtpTls,
    SmtpUsername,
    Tags,
    filled,
    page_config,
    single_line,
)
from mailfleet_api.schemas.oauth import OAuthStatus

AccountKind = Literal["smtp", "gmail-api"]
AuthKind = Literal["password", "oauth2"]

_KIND = (
    "smtp: sends through an SMTP server (smtp_* fields). gmail-api: sends and reads through "
    "the Gmail API, as from_email, always with OAuth2 (Google); no SMTP or IMAP settings."
)
_AUTH_KIND = (
    "How the account signs in: password (smtp_password, imap.password), or oauth2 (XOAUTH2 "
    "for SMTP and IMAP, no passwords; Google Workspace or Microsoft 365). An oauth2 account "
    "is created paused until it is connected (POST /api/admin/accounts/{id}/oauth/consent) "
    "or its credentials are imported (POST /api/admin/accounts/{id}/oauth)."
)
_SMTP_USERNAME = "The SMTP login; for an oauth2 account, the mailbox it signs in as."


class _AccountFields(Body):
    smtp_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None, description="Required for kind smtp."
    )
    smtp_tls: SmtpTls | None = Field(default=None, description="Required for kind smtp.")
    smtp_username: SmtpUsername | None = Field(default=None, description=_SMTP_USERNAME)
    smtp_password: Annotated[SecretStr, Field(max_length=4096)] | None = None
    from_email: EmailAddress
    from_name: Name | None = None
    daily_limit: Annotated[int, Field(ge=0, le=10_000_000)]
    min_gap_ms: Annotated[int, Field(ge=0, le=86_400_000)] = 0
    warmup_enabled: bool = False
    warmup_initial: Annotated[int, Field(ge=0, le=10_000_000)] = 20
    warmup_increment: Annotated[int, Field(ge=0, le=10_000_000)] = 20


HostName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\[\]-]+$")]
Port = Annotated[int, Field(ge=1, le=65535)]
ImapUsername = Annotated[str, Field(min_length=1, max_length=320), AfterValidator(single_line)]
ImapPassword = Annotated[SecretStr, Field(min_length=1, max_length=4096)]
MailboxName = Annotated[
    str, Field(min_length=1, max_length=200), AfterValidator(single_line), AfterValidator(filled)
]
IMAP_PORTS: dict[str, int] = {"implicit": 993, "starttls": 143, "none": 143}

_IMAP_FOLDER = "The folder read for bounces, complaints and replies."
_IMAP_PROCESSED_FOLDER = (
    "Where processed messages are moved (created if absent); null leaves them in place, "
    "flagged as seen."
)


# The examples of the OpenAPI document: one account, as created and as shown.
_IMAP_EXAMPLE: dict[str, Any] = {
    "host": "imap.example.com",
    "tls": "implicit",
    "username": "bounces@news.example.com",
    "folder": "INBOX",
    "processed_folder": "Processed",
}
_USAGE_EXAMPLE: dict[str, Any] = {
    "day": "2025-03-14",
    "reserved": 412,
    "sent": 398,
    "failed": 3,
    "effective_limit": 1050,
}
_ACCOUNT_EXAMPLE: dict[str, Any] = {
    "id": "0f6b5d1e-8c2a-4b7e-9a31-5c2d7e4f8a10",
    "name": "eu-smtp-1",
    "kind": "smtp",
    "smtp_host": "smtp.example.com",
    "smtp_port": 587,
    "smtp_tls": "starttls",
    "smtp_username": "news@example.com",
    "has_password": True,
    "auth_kind": "password",
    "oauth": None,
    "from_email": "news@example.com",
    "from_name": "Example News",
    "daily_limit": 5000,
    "min_gap_ms": 200,
    "warmup_enabled": True,
    "warmup_started_on": "2025-02-24",
    "warmup_initial": 50,
    "warmup_increment": 50,
    "status": "active",
    "status_reason": None,
    "tags": ["eu", "newsletter"],
    "held_until": None,
    "held_reason": None,
    "rates_since": "2025-03-02T09:15:00Z",
    "imap": {**_IMAP_EXAMPLE, "port": 993, "has_password": True},
    "created_at": "2025-02-24T10:02:11Z",
    "updated_at": "2025-03-02T09:15:00Z",
    "today": _USAGE_EXAMPLE,
}


def _distinct_folders(folder: str | None, processed_folder: str | None) -> None:
    if folder is not None and folder == processed_folder:
        raise ValueError("processed_folder must differ from folder")


class ImapCreate(Body):
    """The mailbox where an account's bounces, complaints and replies arrive."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_IMAP_EXAMPLE, "password": "imap-app-password"}]}
    )

    host: HostName
    port: Port | None = Field(default=None, description="Default: 993 with implicit TLS, else 143.")
    tls: SmtpTls = "implicit"
    username: ImapUsername
    password: ImapPassword | None = Field(
        default=None, description="Required unless the account is oauth2 (XOAUTH2 signs in)."
    )
    folder: MailboxName = Field(default="INBOX", description=_IMAP_FOLDER)
    processed_folder: MailboxName | None = Field(default=None, description=_IMAP_PROCESSED_FOLDER)

    @model_validator(mode="after")
    def _folders_differ(self) -> "ImapCreate":
        _distinct_folders(self.folder, self.processed_folder)
        return self


class ImapUpdate(Body):
    """Only the fields present change; the rest of the stored settings stay."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"password": "new-imap-app-password"}, {"processed_folder": None}]
        }
    )

    host: HostName | None = None
    port: Port | None = None
    tls: SmtpTls | None = None
    username: ImapUsername | None = None
    password: ImapPassword | None = None
    folder: MailboxName | None = Field(default=None, description=_IMAP_FOLDER)
    processed_folder: MailboxName | None = Field(default=None, description=_IMAP_PROCESSED_FOLDER)

    @model_validator(mode="after")
    def _no_nulls(self) -> "ImapUpdate":
        for field in self.model_fields_set - {"processed_folder"}:
            if getattr(self, field) is None:
                raise ValueError(f"imap.{field} cannot be null (send imap: null to remove IMAP)")
        _distinct_folders(self.folder, self.processed_folder)
        return self


class ImapSettings(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ACCOUNT_EXAMPLE["imap"]]})

    host: str
    port: int
    tls: SmtpTls
    username: str
    folder: str = Field(description=_IMAP_FOLDER)
    processed_folder: str | None = Field(description=_IMAP_PROCESSED_FOLDER)
    has_password: bool


_IMAP = (
    "Where the account's returns arrive (kind smtp). The password is stored encrypted, never "
    "returned; an oauth2 account signs in with XOAUTH2 and needs none."
)


_ACCOUNT_TAGS = (
    "The pools the account belongs to; a campaign naming one of them in `pools` may send "
    "through it. At most 32."
)


class AccountCreate(_AccountFields):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "eu-smtp-1",
                    "smtp_host": "smtp.example.com",
                    "smtp_port": 587,
                    "smtp_tls": "starttls",
                    "smtp_username": "news@example.com",
                    "smtp_password": "smtp-app-password",
                    "from_email": "news@example.com",
                    "from_name": "Example News",
                    "daily_limit": 5000,
                    "min_gap_ms": 200,
                    "warmup_enabled": True,
                    "warmup_initial": 50,
                    "warmup_increment": 50,
                    "tags": ["eu", "newsletter"],
                    "imap": {**_IMAP_EXAMPLE, "password": "imap-app-password"},
                },
                {
                    "name": "gmail-news",
                    "kind": "gmail-api",
                    "from_email": "news@example.com",
                    "from_name": "Example News",
                    "daily_limit": 1500,
                },
                {
                    "name": "m365-news",
                    "auth_kind": "oauth2",
                    "smtp_host": "smtp.office365.com",
                    "smtp_port": 587,
                    "smtp_tls": "starttls",
                    "smtp_username": "news@example.com",
                    "from_email": "news@example.com",
                    "daily_limit": 5000,
                    "imap": {
                        "host": "outlook.office365.com",
                        "username": "news@example.com",
                        "processed_folder": "Processed",
                    },
                },
            ]
        }
    )

    name: Name
    kind: AccountKind = Field(default="smtp", description=_KIND)
    auth_kind: AuthKind | None = Field(
        default=None, description=_AUTH_KIND + " Default: oauth2 for gmail-api, else password."
    )
    smtp_host: HostName | None = Field(default=None, description="Required for kind smtp.")
    status: SettableAccountStatus = Field(
        default="active",
        description="An oauth2 account without credentials yet starts paused (consent needed).",
    )
    tags: Tags = Field(default=[], description=_ACCOUNT_TAGS)
    imap: ImapCreate | None = Field(default=None, description=_IMAP)


class AccountUpdate(Body):
    """Only the fields present change; ``smtp_password: null`` removes the password."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "paused"},
                {"daily_limit": 8000, "tags": ["eu", "newsletter", "warm"], "imap": None},
            ]
        }
    )

    name: Name | None = None
    auth_kind: AuthKind | None = Field(
        default=None,
        description="Switching an smtp account to oauth2 needs smtp_password: null if it has "
        "one; it stays paused for consent until connected. The kind cannot change.",
    )
    smtp_host: HostName | None = None
    smtp_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    smtp_tls: SmtpTls | None = None
    smtp_username: SmtpUsername | None = Field(default=None, description=_SMTP_USERNAME)
    smtp_password: Annotated[SecretStr, Field(max_length=4096)] | None = None
    from_email: EmailAddress | None = None
    from_name: Name | None = None
    daily_limit: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    min_gap_ms: Annotated[int, Field(ge=0, le=86_400_000)] | None = None
    warmup_enabled: bool | None = None
    warmup_initial: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    warmup_increment: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    status: SettableAccountStatus | None = None
    tags: Tags | None = Field(default=None, description=_ACCOUNT_TAGS + " Replaces the list.")
    imap: ImapUpdate | None = Field(
        default=None,
        description=_IMAP + " Fields given change, null removes the IMAP settings. A new "
        "host, username or folder makes the bouncer read the mailbox from its start.",
    )

    @model_validator(mode="after")
    def _required_stay_set(self) -> "AccountUpdate":
        required = (
            "name",
            "auth_kind",
            "from_email",
            "daily_limit",
            "min_gap_ms",
            "warmup_enabled",
            "warmup_initial",
            "warmup_increment",
            "status",
            "tags",
        )
        for field in required:
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class AccountUsage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_USAGE_EXAMPLE]})

    day: date
    reserved: int
    sent: int
    failed: int
    effective_limit: int


class Account(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ACCOUNT_EXAMPLE]})

    id: UUID
    name: str
    kind: AccountKind = Field(description=_KIND)
    smtp_host: str | None
    smtp_port: int | None
    smtp_tls: SmtpTls | None
    smtp_username: str | None
    has_password: bool
    from_email: str
    from_name: str | None
    daily_limit: int
    min_gap_ms: int
    warmup_enabled: bool
    warmup_started_on: date | None
    warmup_initial: int
    warmup_increment: int
    status: AccountStatus
    status_reason: str | None
    tags: list[str] = Field(description=_ACCOUNT_TAGS)
    held_until: datetime | None = Field(
        default=None,
        description="Set while the account waits: for its SMTP server after a failed connection "
        "(refused, unreachable, timed out), or for the Gmail API after a rate limit or until "
        "the next UTC midnight after its daily sending limit. It gets no new work until then, "
        "and what it held went to other accounts. Null when it is not waiting.",
    )
    held_reason: str | None = Field(
        default=None, description="Why the account waits (the last failure), while it does."
    )
    rates_since: datetime | None = Field(
        description="Bounce and complaint rates count sends after this (null: every send); "
        "set when the account is resumed."
    )
    imap: ImapSettings | None = Field(description=_IMAP)
    auth_kind: AuthKind = Field(description=_AUTH_KIND)
    oauth: OAuthStatus | None = Field(
        description="Its OAuth2 credentials (never the secrets), once imported "
        "(POST /api/admin/accounts/{id}/oauth)."
    )
    created_at: datetime
    updated_at: datetime
    today: AccountUsage


class AccountPage(CursorPage[Account]):
    """A page of accounts, oldest first."""

    model_config = page_config(
        _ACCOUNT_EXAMPLE,
        "MjAyNS0wMi0yNFQxMDowMjoxMSswMDowMHwwZjZiNWQxZS04YzJhLTRiN2UtOWEzMS01YzJkN2U0ZjhhMTA",
    )
