"""Request and response bodies of the HTTP API."""

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


class CampaignCreate(_Body):
    name: Name
    subject: Annotated[
        str, Field(min_length=1, max_length=MAX_SUBJECT_CHARS), AfterValidator(_single_line)
    ]
    html_body: Annotated[str, AfterValidator(_no_nul)] | None = None
    text_body: Annotated[str, AfterValidator(_no_nul)] | None = None
    account_ids: Annotated[list[UUID], Field(max_length=1000)] = []
    start_at: AwareDatetime | None = None
    tracking: bool = True

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
    tracking: bool
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class Campaign(CampaignSummary):
    html_body: str | None
    text_body: str | None
    messages: dict[str, int] = Field(description="Number of messages in each status.")
    total_messages: int


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
