"""Settings of the API service and the mailfleet CLI."""

from typing import Literal

from limits import parse
from mailfleet_common.settings import (
    CryptoSettings,
    GmailSettings,
    HttpSettings,
    OAuthSettings,
    ServiceSettings,
    TemplateSettings,
    absolute_http_url,
)
from pydantic import BaseModel, Field, SecretStr, field_validator

MIN_JWT_SECRET_LENGTH = 32


class AuthSettings(BaseModel):
    """Login tokens.

    ``jwt_secret`` (MAILFLEET_AUTH__JWT_SECRET) must hold at least 32 characters. Only when
    ``dev_ephemeral_secret`` is set may it be empty: the API then signs with a random secret
    made at start-up, so tokens die with the process and no known secret ever signs one.
    """

    jwt_secret: SecretStr = SecretStr("")
    dev_ephemeral_secret: bool = False
    token_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    # Password hashes are checked in this many threads, off the event loop.
    verify_workers: int = Field(default=2, ge=1, le=64)
    # Logins waiting for a thread beyond this are refused (429, Retry-After: 1).
    verify_queue: int = Field(default=64, ge=1)


def a_rate(value: str) -> str:
    """A rate in the ``limits`` notation ("600/minute"); ValueError otherwise."""
    parse(value)  # raises ValueError on anything but "N/period"
    return value


class ThrottleSettings(BaseModel):
    """Failed-login limits (MAILFLEET_THROTTLE__*), in the ``limits`` notation ("10/15 minutes").

    ``storage_url`` is a Redis URL (``redis://127.0.0.1:6379/0``) shared by every API replica;
    empty, the counts are kept in each process's memory (one replica, or development).
    """

    storage_url: SecretStr = SecretStr("")
    key_prefix: str = Field(default="mailfleet", min_length=1, max_length=100)
    # How long a call to Redis may take before the request goes on without it.
    storage_timeout_s: float = Field(default=0.25, gt=0, le=10)
    login_per_account: str = "10/15 minutes"
    login_per_client: str = "50/15 minutes"

    _rates = field_validator("login_per_account", "login_per_client")(a_rate)


class RateLimitSettings(BaseModel):
    """Request rate limits (MAILFLEET_RATE_LIMIT__*), per API key or per user (access tokens).

    Counted where the login throttle counts (MAILFLEET_THROTTLE__STORAGE_URL).
    ``default`` applies to every authenticated request, unless the key was created with a
    rate of its own; ``heavy`` applies besides to the routes that queue or stream a lot
    (enqueue, suppression imports and exports). ``enabled=false`` turns both off.
    """

    enabled: bool = True
    default: str = "3000/minute"
    heavy: str = "300/minute"
    # While the storage is unreachable, requests go on unlimited; it is tried again after this.
    storage_retry_s: float = Field(default=5.0, ge=0, le=300)

    _rates = field_validator("default", "heavy")(a_rate)


class EnqueueSettings(BaseModel):
    max_recipients: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_variables_bytes: int = Field(default=8 * 1024, ge=2)


class TransactionalSettings(BaseModel):
    """POST /api/messages (MAILFLEET_TRANSACTIONAL__*): batch size and attachment limits.

    The request as a whole is also bounded by MAILFLEET_ENQUEUE__MAX_BODY_BYTES (base64 makes
    a file a third larger in the request than in the message).
    """

    max_messages: int = Field(default=100, ge=1, le=1000)
    max_attachments: int = Field(default=10, ge=0, le=100)
    max_attachment_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    # All of one message's files together.
    max_attachments_total_bytes: int = Field(default=10 * 1024 * 1024, ge=1)


class RetentionSettings(BaseModel):
    """What `mailfleet retention` keeps (MAILFLEET_RETENTION__*).

    ``events_months``: a monthly `events` partition is dropped once all of it is older (opens,
    clicks and the rest of the history behind engagement figures go with it).
    ``reports_days``: inbound reports (bounces, complaints, replies read by the bouncer) older
    than this are deleted, once published; a mailbox read again from the start after that
    (new UIDVALIDITY) would see such old messages as new, so keep it above how long mail
    stays in the accounts' mailboxes.
    ``attempts_days``: SMTP attempts older than this are deleted, but only those of messages
    that are sent, failed or cancelled.
    ``idempotency_key_hours``: an enqueue's Idempotency-Key is replayed for at least this long.
    ``webhook_days``: webhook deliveries older than this are deleted with their attempts (the
    delivery log), once delivered or given up; pending ones stay.
    ``batch_size`` rows go per transaction; no statement waits longer than
    ``lock_timeout_ms`` for a lock (it gives way and tries again).
    """

    events_months: int = Field(default=13, ge=1, le=1200)
    reports_days: int = Field(default=180, ge=1)
    attempts_days: int = Field(default=180, ge=1)
    idempotency_key_hours: int = Field(default=7 * 24, ge=1)
    webhook_days: int = Field(default=30, ge=1)
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    lock_timeout_ms: int = Field(default=2000, ge=10, le=60_000)


class PrivacySettings(BaseModel):
    """What the API shows of recipients' tracking hits (MAILFLEET_PRIVACY__*).

    ``ip``: ``full`` shows the address an open or click came from as recorded; ``truncated``
    (the default) only its network, the first 24 bits of an IPv4 address and the first 48 of
    an IPv6 one (192.0.2.0, 2001:db8:1::); ``none`` shows no address at all.
    """

    ip: Literal["full", "truncated", "none"] = "truncated"


class ApiHttpSettings(HttpSettings):
    """Where the API answers, and where browsers reach it.

    ``public_url`` (MAILFLEET_HTTP__PUBLIC_URL): the API's public base URL, e.g.
    ``https://mailfleet.example.com``; the OAuth consent callback is ``/oauth/callback`` under it.
    """

    public_url: str = ""

    _public_url = field_validator("public_url")(absolute_http_url)


class ConsentSettings(BaseModel):
    """The OAuth consent flow started from the API (MAILFLEET_CONSENT__*).

    ``ttl_s``: how long a consent URL stays usable; the admin must finish consenting by then.
    """

    ttl_s: int = Field(default=900, ge=60, le=24 * 3600)


class Settings(ServiceSettings):
    """MAILFLEET_POSTGRES__DSN, MAILFLEET_RABBIT__URL, MAILFLEET_AUTH__JWT_SECRET, ..."""

    http: ApiHttpSettings = ApiHttpSettings()
    auth: AuthSettings = AuthSettings()
    crypto: CryptoSettings = CryptoSettings()
    enqueue: EnqueueSettings = EnqueueSettings()
    transactional: TransactionalSettings = TransactionalSettings()
    throttle: ThrottleSettings = ThrottleSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    templates: TemplateSettings = TemplateSettings()
    retention: RetentionSettings = RetentionSettings()
    privacy: PrivacySettings = PrivacySettings()
    oauth: OAuthSettings = OAuthSettings()
    gmail: GmailSettings = GmailSettings()
    consent: ConsentSettings = ConsentSettings()

    @property
    def oauth_redirect_uri(self) -> str:
        """Where providers send the consenting browser back; "" when neither is configured."""
        if self.oauth.redirect_uri:
            return self.oauth.redirect_uri
        return f"{self.http.public_url}/oauth/callback" if self.http.public_url else ""
