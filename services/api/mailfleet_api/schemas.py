"""Request and response bodies of the HTTP API."""

from collections.abc import Mapping
from datetime import date, datetime
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

Role = Literal["admin", "operator", "viewer"]
SmtpTls = Literal["implicit", "starttls", "none"]
AccountStatus = Literal["active", "paused", "disabled", "archived"]
SettableAccountStatus = Literal["active", "paused", "disabled"]
CampaignStatus = Literal["draft", "running", "paused", "cancelled", "completed"]
UnsubscribeScope = Literal["global", "campaign"]

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


def _email_address(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email address: {exc}") from exc


SingleLine = Annotated[str, AfterValidator(_single_line)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_single_line)]
SmtpUsername = Annotated[str, Field(max_length=320), AfterValidator(_single_line)]
EmailAddress = Annotated[str, Field(max_length=320), AfterValidator(_email_address)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


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
    password: Annotated[SecretStr, Field(min_length=12, max_length=1024)]
    role: Role


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


SmtpHost = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\[\]-]+$")]


class AccountCreate(_AccountFields):
    name: Name
    smtp_host: SmtpHost
    status: SettableAccountStatus = "active"


class AccountUpdate(_Body):
    """Only the fields present change; ``smtp_password: null`` removes the password."""

    name: Name | None = None
    smtp_host: SmtpHost | None = None
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
    created_at: datetime
    updated_at: datetime
    today: AccountUsage


# --- campaigns ----------------------------------------------------------------------------

_TRACKING = "Count opens and clicks of this campaign's messages."
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
    account_ids: Annotated[list[UUID], Field(max_length=1000)] = []
    start_at: AwareDatetime | None = None
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
    account_ids: list[UUID]
    status: CampaignStatus
    start_at: datetime | None
    tracking: bool = Field(description=_TRACKING)
    unsubscribe_scope: UnsubscribeScope = Field(description=_UNSUBSCRIBE_SCOPE)
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class Campaign(CampaignSummary):
    html_body: str | None
    text_body: str | None
    messages: dict[str, int] = Field(description="Number of messages in each status.")
    total_messages: int


class CampaignUpdate(_Body):
    """Only the fields present change."""

    tracking: bool | None = Field(default=None, description=_TRACKING)
    unsubscribe_scope: UnsubscribeScope | None = Field(default=None, description=_UNSUBSCRIBE_SCOPE)

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
        counts = {name: int(row.get(name) or 0) for name in _COUNTERS}
        sent = counts["sent"]
        rates = {
            rate: round(counts[unique] / sent, 4) if sent else 0.0
            for rate, unique in _RATE_OF.items()
        }
        return cls.model_validate({**counts, **rates})


_RATE_OF = {
    "open_rate": "unique_opens",
    "human_open_rate": "unique_human_opens",
    "click_rate": "unique_clicks",
    "human_click_rate": "unique_human_clicks",
    "unsubscribe_rate": "unsubscribes",
}
_COUNTERS = tuple(name for name in Engagement.model_fields if name not in _RATE_OF)


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
    engagement_by_account: list[AccountEngagement] = Field(
        description="The same figures for each account that sent this campaign's messages."
    )


class CampaignStart(_Body):
    start_at: AwareDatetime | None = None


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
