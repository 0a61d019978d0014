"""Request and response bodies of the HTTP API."""

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

from mailfleet_api.auth import password_problem

Role = Literal["admin", "operator", "viewer"]
SmtpTls = Literal["implicit", "starttls", "none"]
AccountStatus = Literal["active", "paused", "disabled", "archived"]
SettableAccountStatus = Literal["active", "paused", "disabled"]
CampaignStatus = Literal["draft", "running", "paused", "cancelled", "completed"]
UnsubscribeScope = Literal["global", "campaign"]
InboundKind = Literal["bounce", "complaint", "reply", "auto-reply", "unsubscribe", "unrecognized"]

MAX_SUBJECT_CHARS = 998  # RFC 5322 2.1.1: a header line is at most 998 characters
MAX_NAME_CHARS = 200
MAX_BODY_BYTES = 512 * 1024

T = TypeVar("T")


def _single_line(value: str) -> str:
    # A CR or LF in anything that ends up in a header would let a caller inject headers.
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain CR or LF")
    return _no_nul(value)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")  # PostgreSQL text cannot hold NUL
    return value


def _filled(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _in_utc_range(value: datetime) -> datetime:
    # 0001-01-01T00:00+14:00 is a valid timestamp that falls before year 1 in UTC, where the
    # database driver compares it: refused here rather than failing there.
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None
    return value


def _email_address(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email address: {exc}") from exc


SingleLine = Annotated[str, AfterValidator(_single_line)]
# A timestamp with an offset, within the range of datetime once in UTC.
Moment = Annotated[AwareDatetime, AfterValidator(_in_utc_range)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_single_line)]
SmtpUsername = Annotated[str, Field(max_length=320), AfterValidator(_single_line)]
EmailAddress = Annotated[str, Field(max_length=320), AfterValidator(_email_address)]

MAX_TAGS = 32
TAG_PATTERN = r"^[a-z0-9][a-z0-9._:-]*$"
TAG_RULE = (
    "Lowercase letters, digits and . _ : - (starting with a letter or digit), at most 63 "
    "characters."
)
Tag = Annotated[
    str,
    Field(min_length=1, max_length=63, pattern=TAG_PATTERN, description=TAG_RULE),
]


def _tag_set(tags: list[str]) -> list[str]:
    return sorted(set(tags))


# Stored sorted and without repeats.
Tags = Annotated[list[Tag], Field(max_length=MAX_TAGS), AfterValidator(_tag_set)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class CursorPage(BaseModel, Generic[T]):
    """A page of a list read newest first; the next one starts after its last item."""

    items: list[T]
    limit: int
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: last.")


# --- auth, users, API keys ----------------------------------------------------------------


class LoginRequest(_Body):
    email: Annotated[str, Field(max_length=320)]
    password: Annotated[str, Field(max_length=1024)]


class AccessToken(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth 2 token type
    expires_at: datetime
    expires_in: int


class UserCreate(_Body):
    email: EmailAddress
    password: Annotated[
        SecretStr,
        Field(
            min_length=12,
            max_length=1024,
            description="At least 12 characters, not blank, and hard to guess (zxcvbn score 3+).",
        ),
    ]
    role: Role

    @model_validator(mode="after")
    def _strong_password(self) -> "UserCreate":
        problem = password_problem(self.password.get_secret_value(), self.email)
        if problem is not None:
            raise ValueError(problem)
        return self


class User(BaseModel):
    id: UUID
    email: str
    role: Role
    disabled: bool
    created_at: datetime


class ApiKeyCreate(_Body):
    name: Name
    # Defaults to the caller's role; never above it.
    role: Role | None = None


class ApiKey(BaseModel):
    id: UUID
    user_id: UUID
    name: str
    prefix: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The full key. Shown this once; only a hash is stored.")


# --- accounts -----------------------------------------------------------------------------


class _AccountFields(_Body):
    smtp_port: Annotated[int, Field(ge=1, le=65535)]
    smtp_tls: SmtpTls
    smtp_username: SmtpUsername | None = None
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
ImapUsername = Annotated[str, Field(min_length=1, max_length=320), AfterValidator(_single_line)]
ImapPassword = Annotated[SecretStr, Field(min_length=1, max_length=4096)]
MailboxName = Annotated[
    str, Field(min_length=1, max_length=200), AfterValidator(_single_line), AfterValidator(_filled)
]
IMAP_PORTS: dict[str, int] = {"implicit": 993, "starttls": 143, "none": 143}

_IMAP_FOLDER = "The folder read for bounces, complaints and replies."
_IMAP_PROCESSED_FOLDER = (
    "Where processed messages are moved (created if absent); null leaves them in place, "
    "flagged as seen."
)


def _distinct_folders(folder: str | None, processed_folder: str | None) -> None:
    if folder is not None and folder == processed_folder:
        raise ValueError("processed_folder must differ from folder")


class ImapCreate(_Body):
    """The mailbox where an account's bounces, complaints and replies arrive."""

    host: HostName
    port: Port | None = Field(default=None, description="Default: 993 with implicit TLS, else 143.")
    tls: SmtpTls = "implicit"
    username: ImapUsername
    password: ImapPassword
    folder: MailboxName = Field(default="INBOX", description=_IMAP_FOLDER)
    processed_folder: MailboxName | None = Field(default=None, description=_IMAP_PROCESSED_FOLDER)

    @model_validator(mode="after")
    def _folders_differ(self) -> "ImapCreate":
        _distinct_folders(self.folder, self.processed_folder)
        return self


class ImapUpdate(_Body):
    """Only the fields present change; the rest of the stored settings stay."""

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
    host: str
    port: int
    tls: SmtpTls
    username: str
    folder: str = Field(description=_IMAP_FOLDER)
    processed_folder: str | None = Field(description=_IMAP_PROCESSED_FOLDER)
    has_password: bool


_IMAP = "Where the account's returns arrive. The password is stored encrypted, never returned."


_ACCOUNT_TAGS = (
    "The pools the account belongs to; a campaign naming one of them in `pools` may send "
    "through it. At most 32."
)


class AccountCreate(_AccountFields):
    name: Name
    smtp_host: HostName
    status: SettableAccountStatus = "active"
    tags: Tags = Field(default=[], description=_ACCOUNT_TAGS)
    imap: ImapCreate | None = Field(default=None, description=_IMAP)


class AccountUpdate(_Body):
    """Only the fields present change; ``smtp_password: null`` removes the password."""

    name: Name | None = None
    smtp_host: HostName | None = None
    smtp_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    smtp_tls: SmtpTls | None = None
    smtp_username: SmtpUsername | None = None
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
            "smtp_host",
            "smtp_port",
            "smtp_tls",
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
    day: date
    reserved: int
    sent: int
    failed: int
    effective_limit: int


class Account(BaseModel):
    id: UUID
    name: str
    kind: str
    smtp_host: str
    smtp_port: int
    smtp_tls: SmtpTls
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
        description="Set while the account waits for its SMTP server after a failed connection "
        "(refused, unreachable, timed out): it gets no new work until then, and what it held "
        "went to other accounts. Null when it is not waiting.",
    )
    held_reason: str | None = Field(
        default=None, description="The last connection failure, while the account waits."
    )
    rates_since: datetime | None = Field(
        description="Bounce and complaint rates count sends after this (null: every send); "
        "set when the account is resumed."
    )
    imap: ImapSettings | None = Field(description=_IMAP)
    created_at: datetime
    updated_at: datetime
    today: AccountUsage


class Pool(BaseModel):
    """The accounts carrying a tag, and the campaigns that send through them."""

    tag: str
    accounts: dict[AccountStatus, int] = Field(description="Accounts in each status.")
    daily_capacity: int = Field(description="Today's limits of the active accounts, summed.")
    remaining_today: int = Field(
        description="What the active accounts can still send today (UTC) under their limits."
    )
    campaigns: dict[CampaignStatus, int] = Field(
        description="Campaigns naming the tag in their pools, in each status."
    )


# --- campaigns ----------------------------------------------------------------------------

_TRACKING = "Count opens and clicks of this campaign's messages."
_ACCOUNT_IDS = (
    "Accounts this campaign may send through, by id (at most 1000; for more, tag them and "
    "use pools)."
)
_POOLS = (
    "Tags: the campaign may also send through every active account carrying any of them, "
    "as they are at each assignment (accounts tagged later join, untagged ones leave). With "
    "neither pools nor account_ids, every active account. Each must be carried by an account "
    "that is not archived."
)
_UNSUBSCRIBE_SCOPE = (
    "What a recipient unsubscribing from this campaign's message stops: every campaign "
    "(global) or only this one (campaign)."
)


class CampaignCreate(_Body):
    name: Name
    subject: Annotated[
        str, Field(min_length=1, max_length=MAX_SUBJECT_CHARS), AfterValidator(_single_line)
    ]
    html_body: Annotated[str, AfterValidator(_no_nul)] | None = None
    text_body: Annotated[str, AfterValidator(_no_nul)] | None = None
    account_ids: Annotated[list[UUID], Field(max_length=1000)] = Field(
        default=[], description=_ACCOUNT_IDS
    )
    pools: Tags = Field(default=[], description=_POOLS)
    start_at: Moment | None = None
    tracking: bool = Field(default=True, description=_TRACKING)
    unsubscribe_scope: UnsubscribeScope = Field(default="global", description=_UNSUBSCRIBE_SCOPE)

    @model_validator(mode="after")
    def _has_a_body(self) -> "CampaignCreate":
        if not self.html_body and not self.text_body:
            raise ValueError("a campaign needs html_body or text_body")
        return self


class CampaignSummary(BaseModel):
    id: UUID
    owner_id: UUID
    name: str
    subject: str
    account_ids: list[UUID] = Field(description=_ACCOUNT_IDS)
    pools: list[str] = Field(description=_POOLS)
    status: CampaignStatus
    start_at: datetime | None
    tracking: bool = Field(description=_TRACKING)
    unsubscribe_scope: UnsubscribeScope = Field(description=_UNSUBSCRIBE_SCOPE)
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class CampaignPool(BaseModel):
    """The accounts a campaign may send through now (its pool, resolved as the dispatcher does)."""

    every_account: bool = Field(description="Neither pools nor account_ids: every account.")
    accounts: dict[AccountStatus, int] = Field(description="Member accounts in each status.")
    remaining_today: int = Field(
        description="What the active members can still send today (UTC) under their limits."
    )


class Campaign(CampaignSummary):
    html_body: str | None
    text_body: str | None
    messages: dict[str, int] = Field(description="Number of messages in each status.")
    total_messages: int
    pool: CampaignPool


class CampaignUpdate(_Body):
    """Only the fields present change."""

    tracking: bool | None = Field(default=None, description=_TRACKING)
    unsubscribe_scope: UnsubscribeScope | None = Field(default=None, description=_UNSUBSCRIBE_SCOPE)
    account_ids: Annotated[list[UUID], Field(max_length=1000)] | None = Field(
        default=None, description=_ACCOUNT_IDS + " Replaces the list, also while running."
    )
    pools: Tags | None = Field(
        default=None, description=_POOLS + " Replaces the list, also while running."
    )

    @model_validator(mode="after")
    def _no_nulls(self) -> "CampaignUpdate":
        for field in self.model_fields_set:
            if getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class Engagement(BaseModel):
    """Opens, clicks and unsubscribes of sent messages.

    Hits flagged as machine-made (mail-privacy proxies that fetch every image, link scanners)
    count in the totals but not in the human figures. Rates are unique counts over ``sent``,
    rounded to 4 decimals, and 0 when nothing was sent.
    """

    sent: int = Field(description="Messages sent.")
    opens: int = Field(description="Open events, repeats and machine opens included.")
    unique_opens: int = Field(description="Messages opened at least once.")
    human_opens: int = Field(description="Open events not flagged as machine-made.")
    unique_human_opens: int = Field(description="Messages opened at least once by a human.")
    clicks: int = Field(description="Click events, repeats and machine clicks included.")
    unique_clicks: int = Field(description="Messages with at least one click.")
    human_clicks: int = Field(description="Click events not flagged as machine-made.")
    unique_human_clicks: int = Field(description="Messages with at least one human click.")
    unsubscribes: int = Field(description="Messages whose recipient unsubscribed.")
    open_rate: float = Field(description="unique_opens / sent")
    human_open_rate: float = Field(description="unique_human_opens / sent")
    click_rate: float = Field(description="unique_clicks / sent")
    human_click_rate: float = Field(description="unique_human_clicks / sent")
    unsubscribe_rate: float = Field(description="unsubscribes / sent")

    @classmethod
    def from_counts(cls, row: Mapping[str, Any]) -> "Engagement":
        """The counters found in `row` (a missing or NULL one is 0) and the rates from them."""
        return cls.model_validate(_counts_and_rates(cls, row, _ENGAGEMENT_RATES))


def _counts_and_rates(
    model: type[BaseModel], row: Mapping[str, Any], rate_of: Mapping[str, str]
) -> dict[str, Any]:
    """The model's counters from `row` (missing or NULL: 0) and the rates over "sent".

    `rate_of` names the counter of each rate; every other field of the model is a counter.
    """
    names = [name for name in model.model_fields if name not in rate_of]
    counts = {name: int(row.get(name) or 0) for name in names}
    sent = counts["sent"]
    rates = {rate: round(counts[name] / sent, 4) if sent else 0.0 for rate, name in rate_of.items()}
    return {**counts, **rates}


_ENGAGEMENT_RATES = {
    "open_rate": "unique_opens",
    "human_open_rate": "unique_human_opens",
    "click_rate": "unique_clicks",
    "human_click_rate": "unique_human_clicks",
    "unsubscribe_rate": "unsubscribes",
}


class Feedback(BaseModel):
    """What came back for sent messages, as the bouncer read it from the accounts' mailboxes.

    A bounced or complained-about message stays ``sent``: the receiving server had accepted
    it. Rates are over ``sent``, rounded to 4 decimals, and 0 when nothing was sent.
    """

    sent: int = Field(description="Messages sent.")
    hard_bounces: int = Field(description="Sent messages that bounced for good.")
    soft_bounces: int = Field(description="Sent messages that bounced for now (mailbox full...).")
    complaints: int = Field(description="Sent messages their recipient reported as spam.")
    replies: int = Field(description="Sent messages a person replied to.")
    hard_bounce_rate: float = Field(description="hard_bounces / sent")
    soft_bounce_rate: float = Field(description="soft_bounces / sent")
    complaint_rate: float = Field(description="complaints / sent")
    reply_rate: float = Field(description="replies / sent")

    @classmethod
    def from_counts(cls, row: Mapping[str, Any]) -> "Feedback":
        """The counters found in `row` (a missing or NULL one is 0) and the rates from them."""
        return cls.model_validate(feedback_figures(row))


_FEEDBACK_RATES = {
    "hard_bounce_rate": "hard_bounces",
    "soft_bounce_rate": "soft_bounces",
    "complaint_rate": "complaints",
    "reply_rate": "replies",
}


def feedback_figures(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of Feedback from the counters in `row`."""
    return _counts_and_rates(Feedback, row, _FEEDBACK_RATES)


MAILBOX_REPORT_DAYS = 7


class AccountMailbox(BaseModel):
    """How far the bouncer has read the account's mailbox, and what it found there lately.

    The position fields are null until the mailbox is first read (and again after its host,
    username or folder change).
    """

    folder: str | None = Field(description="The folder read.")
    uidvalidity: int | None = Field(description="The folder's UIDVALIDITY when last read.")
    last_uid: int | None = Field(description="The highest UID processed.")
    polled_at: datetime | None = Field(description="When the mailbox was last read.")
    last_error: str | None = Field(description="Why the last read failed; null: it worked.")
    reports: dict[InboundKind, int] = Field(
        description=f"Messages read in the last {MAILBOX_REPORT_DAYS} days, by kind."
    )


class AccountHealth(Feedback):
    """An account's feedback over its most recent sends since ``rates_since``.

    These are the figures the bouncer judges the account by: it pauses an account whose hard
    bounce or complaint rate over its last sends passes the configured maximum.
    """

    account_id: UUID
    status: AccountStatus
    status_reason: str | None
    rates_since: datetime | None = Field(description="Only sends after this count (null: all).")
    window: int = Field(description="At most this many of the newest sends are counted.")
    mailbox: AccountMailbox | None = Field(
        description="The bouncer's reading of the account's mailbox; null: it has no IMAP settings."
    )


class AccountEngagement(BaseModel):
    account_id: UUID
    name: str
    engagement: Engagement


class CampaignEngagement(BaseModel):
    campaign_id: UUID
    name: str
    status: CampaignStatus
    engagement: Engagement


class CampaignDetail(Campaign):
    engagement: Engagement
    feedback: Feedback
    engagement_by_account: list[AccountEngagement] = Field(
        description="The same figures for each account that sent this campaign's messages."
    )


class CampaignStart(_Body):
    start_at: Moment | None = None


class CampaignCancelled(BaseModel):
    campaign: Campaign
    cancelled_messages: int
    released_reservations: int


# --- queue --------------------------------------------------------------------------------


class RecipientIn(BaseModel):
    # Checked one by one in mailfleet_api.recipients, so a bad address rejects that recipient
    # rather than the whole request.
    email: str
    name: str | None = None
    variables: dict[str, Any] | None = None


class EnqueueRequest(_Body):
    campaign_id: UUID
    recipients: list[RecipientIn]


class RejectedRecipient(BaseModel):
    index: int
    email: str
    reason: str


class EnqueueResult(BaseModel):
    campaign_id: UUID
    accepted: int
    rejected_count: int
    rejected: list[RejectedRecipient]


class AccountQueue(BaseModel):
    account_id: UUID
    name: str
    by_status: dict[str, int]


class QueueStatus(BaseModel):
    by_status: dict[str, int]
    by_account: list[AccountQueue]


class QueueClear(_Body):
    campaign_id: UUID | None = None


class QueueCleared(BaseModel):
    removed: int


# --- stats --------------------------------------------------------------------------------


class AccountToday(BaseModel):
    account_id: UUID
    name: str
    status: AccountStatus
    usage: AccountUsage


class Stats(BaseModel):
    messages_by_status: dict[str, int]
    campaigns_by_status: dict[str, int]
    accounts: list[AccountToday]
    engagement_by_account: list[AccountEngagement] = Field(
        description="Each account's engagement across the campaigns of engagement_by_campaign."
    )
    engagement_by_campaign: list[CampaignEngagement] = Field(
        description="Engagement of the newest campaigns that sent anything (campaign_limit)."
    )


# --- suppressions -------------------------------------------------------------------------

SuppressionScope = Literal["global", "campaign"]
SuppressionReason = Annotated[
    str, Field(min_length=1, max_length=100), AfterValidator(_single_line), AfterValidator(_filled)
]
DEFAULT_SUPPRESSION_REASON = "manual"

_EXPIRES_AT = "When it stops applying; null: never."
_SUPPRESSION_CAMPAIGN = "The one campaign it applies to; null: every campaign."


class SuppressionCreate(_Body):
    email: EmailAddress
    reason: SuppressionReason = DEFAULT_SUPPRESSION_REASON
    campaign_id: UUID | None = Field(default=None, description=_SUPPRESSION_CAMPAIGN)
    # Range checked with the rest below, so an import row says "expires_at is out of range".
    expires_at: AwareDatetime | None = Field(default=None, description=_EXPIRES_AT)

    @model_validator(mode="after")
    def _expires_later(self) -> "SuppressionCreate":
        if self.expires_at is None:
            return self
        try:
            expires_at = self.expires_at.astimezone(UTC)
        except OverflowError:
            raise ValueError("expires_at is out of range") from None
        if expires_at <= datetime.now(UTC):
            raise ValueError("expires_at must be in the future")
        return self


class Suppression(BaseModel):
    id: int
    email: str
    campaign_id: UUID | None = Field(description=_SUPPRESSION_CAMPAIGN)
    reason: str
    source: str | None = Field(
        description="What suppressed it: api:user:<id>, api:key:<id>, tracker:..., bouncer:..."
    )
    created_at: datetime
    expires_at: datetime | None = Field(description=_EXPIRES_AT)
    active: bool = Field(description="It applies now: it has not expired.")


class SuppressionAdded(BaseModel):
    suppression: Suppression = Field(
        description="The stored entry, which may differ from the request: a permanent "
        "suppression is never shortened, a temporary one only lengthened."
    )
    created: bool = Field(description="False if the address was already suppressed.")
    cancelled: int = Field(description="Messages to the address that were cancelled.")


FilterText = Annotated[str, Field(min_length=1, max_length=320), AfterValidator(_no_nul)]


class SuppressionFilter(BaseModel):
    """Filters of the suppression list and its export; all given must match."""

    email: FilterText | None = Field(
        default=None, description="This address exactly (case-insensitive)."
    )
    q: FilterText | None = Field(
        default=None, description="Addresses containing this (case-insensitive)."
    )
    reason: FilterText | None = None
    source: FilterText | None = Field(
        default=None, description="Sources starting with this, e.g. bouncer: or tracker:."
    )
    campaign_id: UUID | None = Field(default=None, description="Only this campaign's entries.")
    scope: SuppressionScope | None = Field(
        default=None, description="global: for every campaign; campaign: for one campaign."
    )
    active: bool | None = Field(default=None, description="true: not expired; false: expired.")
    created_after: Moment | None = Field(default=None, description="Created at or after.")
    created_before: Moment | None = Field(default=None, description="Created before.")

    @model_validator(mode="after")
    def _consistent_scope(self) -> "SuppressionFilter":
        if self.campaign_id is not None and self.scope == "global":
            raise ValueError("campaign_id and scope=global exclude each other")
        return self


class SuppressionPage(CursorPage[Suppression]):
    pass


class InvalidRow(BaseModel):
    row: int = Field(description="The row in the file, the header being row 1.")
    email: str | None
    reason: str


class SuppressionImport(BaseModel):
    dry_run: bool = Field(description="Nothing was stored: the figures say what would be.")
    rows: int = Field(description="Rows read, the header and blank lines left out.")
    imported: int = Field(description="Addresses newly suppressed.")
    already_present: int = Field(description="Valid rows whose address was already suppressed.")
    repeated: int = Field(description="Rows with the address and campaign of an earlier row.")
    invalid_count: int
    invalid: list[InvalidRow] = Field(description="The first invalid rows, with the reasons.")
    cancelled: int = Field(description="Messages to the imported addresses that were cancelled.")


# --- inbound reports ----------------------------------------------------------------------


class InboundDetail(BaseModel):
    """What a report says about one recipient, and what was done about it."""

    model_config = ConfigDict(extra="allow")

    address: str | None = None
    bounce: Literal["hard", "soft"] | None = None
    status: str | None = Field(default=None, description="The DSN status code, e.g. 5.1.1.")
    diagnostic: str | None = Field(default=None, description="The receiving server's words.")
    action_field: str | None = Field(default=None, description="The DSN Action field.")
    reason: str | None = Field(
        default=None,
        description="Why the verdict is hard or soft, in words.",
    )
    message_id: int | None = Field(default=None, description="Our message it was matched to.")
    campaign_id: UUID | None = None
    matched_by: str | None = Field(default=None, description="How the message was found.")
    action: str | None = Field(default=None, description="What was done, e.g. suppressed:...")
    feedback_type: str | None = Field(default=None, description="The ARF Feedback-Type.")


class InboundReport(BaseModel):
    """One message the bouncer read from an account's mailbox."""

    id: int
    account_id: UUID
    kind: InboundKind
    parser: str | None = Field(description="How it was recognised: rfc3464, arf, heuristic...")
    sender: str | None
    subject: str | None
    size: int = Field(description="Its size in bytes.")
    truncated: bool = Field(description="It was larger than the bouncer reads; only a part was.")
    matched: int = Field(description="Recipients matched to one of our messages.")
    problem: str | None = Field(
        description="What could not be made sense of (malformed MIME, why it is unrecognized); "
        "null: nothing."
    )
    details: list[InboundDetail] = Field(description="One entry per recipient it concerns.")
    received_at: datetime
    published: bool = Field(description="Its feedback went out on the bus.")
    has_raw: bool = Field(
        description="The message was kept (unrecognized ones are, up to a size cap): see /raw."
    )


class InboundReportFilter(BaseModel):
    """Filters of the inbound report list; all given must match."""

    account_id: UUID | None = None
    kind: InboundKind | None = None
    matched: bool | None = Field(
        default=None, description="true: matched at least one of our messages; false: none."
    )
    problem: bool | None = Field(
        default=None, description="true: it has a problem noted; false: it has none."
    )
    received_after: Moment | None = Field(default=None, description="Read at or after.")
    received_before: Moment | None = Field(default=None, description="Read before.")


class InboundReportPage(CursorPage[InboundReport]):
    pass


# --- uncertain messages -------------------------------------------------------------------

Resolution = Literal["sent", "resend"]
_MESSAGE_IDS_MAX = 10_000


class UncertainMessage(BaseModel):
    """A message that may or may not have reached the SMTP server; it is never re-sent alone."""

    id: int
    campaign_id: UUID
    account_id: UUID | None
    email: str
    message_id: str | None = Field(
        description="The Message-ID header it went out with: look for it at the provider."
    )
    attempts: int
    sender_replica: str | None = Field(description="The sender replica that had it in hand.")
    last_code: int | None
    last_error: str | None
    flagged_at: datetime = Field(description="When it became uncertain.")


class UncertainFilter(BaseModel):
    """Which uncertain messages: all given must match."""

    campaign_id: UUID | None = None
    account_id: UUID | None = None
    sender_replica: str | None = Field(default=None, max_length=100)
    flagged_after: AwareDatetime | None = Field(default=None, description="At or after.")
    flagged_before: AwareDatetime | None = Field(default=None, description="Before.")


class UncertainSelection(UncertainFilter):
    """The filter of a bulk resolution: a misspelt field is refused rather than ignored.

    Ignoring it would widen the selection: `{"campain_id": ...}` would resolve every message.
    """

    model_config = ConfigDict(extra="forbid")


class UncertainPage(CursorPage[UncertainMessage]):
    pass


class UncertainResolve(_Body):
    """Resolve uncertain messages, chosen by `message_ids` or by `filter` (one of them)."""

    resolution: Resolution = Field(
        description="sent: it did arrive, mark it delivered. resend: queue it again with the "
        "same Message-ID (the recipient may get it twice)."
    )
    message_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None = Field(
        default=None, min_length=1, max_length=_MESSAGE_IDS_MAX
    )
    filter: UncertainSelection | None = Field(
        default=None, description="Every uncertain message matching it; {} means all of them."
    )
    accept_duplicate_risk: bool = Field(
        default=False, description="Must be true to resend: the first attempt may have arrived."
    )
    note: str | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _one_choice_and_explicit_risk(self) -> "UncertainResolve":
        if (self.message_ids is None) == (self.filter is None):
            raise ValueError("give either message_ids or filter")
        if self.resolution == "resend" and not self.accept_duplicate_risk:
            raise ValueError(
                "resending may deliver a message twice: set accept_duplicate_risk to true"
            )
        return self


class UncertainResolved(BaseModel):
    resolution: Resolution
    resolved: int = Field(description="Messages resolved by this call.")
    message_ids: list[int] = Field(description="Their ids (the first 10,000).")
    not_uncertain: list[int] = Field(
        description="Ids given that are not uncertain (any more): nothing was done to them."
    )
    resolved_by: str = Field(description="api:user:<id> or api:key:<id>.")
    resolved_at: datetime


class UncertainResolution(BaseModel):
    """Who resolved an uncertain message, how and when."""

    id: int
    message_id: int
    resolution: Resolution
    resolved_by: str
    resolved_at: datetime
    note: str | None


class UncertainResolutionPage(CursorPage[UncertainResolution]):
    pass
