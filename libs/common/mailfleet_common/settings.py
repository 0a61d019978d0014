"""Settings sections shared by every service; each service adds its own on top."""

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailfleet_common.templating import TemplateLimits
from mailfleet_common.tracing import TracingSettings


class PostgresSettings(BaseModel):
    dsn: str = "postgresql://postgres@127.0.0.1:5432/mailfleet"
    pool_min: int = Field(default=2, ge=1)
    pool_max: int = Field(default=10, ge=1)


class RabbitSettings(BaseModel):
    url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    # Seconds between reconnection attempts after the broker went away (aio-pika's default is
    # 5 s, which alone would stall delivery for 5 s after every broker restart).
    reconnect_s: float = Field(default=0.5, gt=0)


class CryptoSettings(BaseModel):
    """Fernet keys for secrets at rest, newest first: the first encrypts, all decrypt.

    MAILFLEET_CRYPTO__KEYS is a comma-separated list; rotate by prepending a new key and
    re-encrypting (``mailfleet rotate-secrets``) before the old one is dropped.
    """

    keys: SecretStr = SecretStr("")


class HttpSettings(BaseModel):
    """Where a service answers HTTP: the API itself, or /metrics and health for workers."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)


class ReplicaSettings(BaseModel):
    """How long a silent sender replica is still taken for alive (MAILFLEET_REPLICAS__TIMEOUT_S).

    One setting read by senders (who owns which account) and the dispatcher (whose `sending`
    messages become `uncertain`), so the two can never disagree.
    """

    timeout_s: float = Field(default=5.0, gt=0)


class AccountRateSettings(BaseModel):
    """The bounce and complaint rates at which the bouncer pauses an account.

    Read from MAILFLEET_BOUNCER__BOUNCE_RATE_MAX, __COMPLAINT_RATE_MAX, __RATE_WINDOW_SENDS and
    __RATE_MIN_SENDS by the bouncer, which judges accounts by them, and by the dispatcher, whose
    fleet gauges export the same rates and thresholds: one setting, so the two cannot disagree.

    - bounce_rate_max, complaint_rate_max: an account whose hard bounces or complaints among
      its last rate_window_sends sends exceed these is paused; rates are judged once it has
      rate_min_sends sends in the window (since it was last resumed).
    """

    bounce_rate_max: float = Field(default=0.05, gt=0, le=1)
    complaint_rate_max: float = Field(default=0.003, gt=0, le=1)
    rate_window_sends: int = Field(default=1000, ge=1)
    rate_min_sends: int = Field(default=100, ge=1)


def absolute_http_url(value: str) -> str:
    """``value`` without its trailing slashes: an absolute http(s) URL or ""; else ValueError."""
    value = value.strip().rstrip("/")
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
    return value


class TrackingSettings(BaseModel):
    """Signed tracking and unsubscribe URLs, shared by the sender (signs) and tracker (checks).

    - keys (MAILFLEET_TRACKING__KEYS): comma-separated HMAC secrets of 32+ characters, newest
      first; the first signs, all verify. Rotate by prepending a key, drop the old one later.
    - base_url (MAILFLEET_TRACKING__BASE_URL): the tracker's public base URL, e.g.
      ``https://t.example.com``; pixel, click and unsubscribe URLs start with it.
    - unsubscribe_mailto: the address of the ``mailto:`` List-Unsubscribe URI; empty means the
      sending account's own address.
    """

    keys: SecretStr = SecretStr("")
    base_url: str = ""
    unsubscribe_mailto: str = ""

    _base_url = field_validator("base_url")(absolute_http_url)


class TemplateSettings(BaseModel):
    """Bounds of one render of a campaign's templates, read by the API and the sender.

    - max_operations (MAILFLEET_TEMPLATES__MAX_OPERATIONS): loop iterations, operators, calls
      and filters a message's subject and bodies may spend together, sizes charged at one per
      64 characters. 100,000 renders in about 0.15 s at worst.
    - max_output_chars (MAILFLEET_TEMPLATES__MAX_OUTPUT_CHARS): the most characters any part,
      or any value built while rendering it, may hold.
    """

    max_operations: int = Field(default=100_000, ge=1000)
    max_output_chars: int = Field(default=1_000_000, ge=1000)

    def limits(self) -> TemplateLimits:
        return TemplateLimits(self.max_operations, self.max_output_chars)


class OAuthClientSettings(BaseModel):
    """One provider's OAuth client (its app registration), token and authorization endpoints."""

    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    token_uri: str
    # Where an admin's browser is sent to consent (the authorization-code flow, API only).
    auth_uri: str = ""
    scopes: str  # space-separated, as asked of the provider


_PROVIDER_DEFAULTS: dict[str, dict[str, str]] = {
    "google": {
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_uri": "https://accounts.google.com/o/oauth2/v2/auth",
        "scopes": "https://www.googleapis.com/auth/gmail.send "
        "https://www.googleapis.com/auth/gmail.modify",
    },
    "microsoft": {
        "token_uri": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        "auth_uri": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        "scopes": "offline_access https://outlook.office.com/SMTP.Send "
        "https://outlook.office.com/IMAP.AccessAsUser.All",
    },
}


class OAuthSettings(BaseModel):
    """OAuth2 clients for Google and Microsoft accounts, read by every service that sends or reads.

    - google / microsoft (MAILFLEET_OAUTH__GOOGLE__CLIENT_ID, __CLIENT_SECRET, __TOKEN_URI,
      __AUTH_URI, __SCOPES; the same under __MICROSOFT__): the app registration refresh tokens
      were issued to. Microsoft's token_uri and auth_uri name the tenant (``common`` takes any).
    - redirect_uri (MAILFLEET_OAUTH__REDIRECT_URI): where the provider sends the consenting
      browser back, registered with both OAuth clients; empty means the API's
      ``/oauth/callback`` under its public URL (MAILFLEET_HTTP__PUBLIC_URL).
    - refresh_margin_s (MAILFLEET_OAUTH__REFRESH_MARGIN_S): an access token this close to its
      expiry is refreshed before use, so none expires in the middle of a send.
    - timeout_s (MAILFLEET_OAUTH__TIMEOUT_S): the most one token request may take.
    """

    google: OAuthClientSettings = OAuthClientSettings(**_PROVIDER_DEFAULTS["google"])
    microsoft: OAuthClientSettings = OAuthClientSettings(**_PROVIDER_DEFAULTS["microsoft"])
    refresh_margin_s: float = Field(default=300.0, ge=0)
    timeout_s: float = Field(default=10.0, gt=0)
    redirect_uri: str = ""

    _redirect_uri = field_validator("redirect_uri")(absolute_http_url)

    @field_validator("google", "microsoft", mode="before")
    @classmethod
    def _provider_defaults(cls, value: Any, info: ValidationInfo) -> Any:
        # Environment variables give only some fields of a client (its id and secret, say):
        # the provider's endpoints and scopes stay as they are unless given too.
        if isinstance(value, dict):
            return {**_PROVIDER_DEFAULTS[info.field_name or ""], **value}
        return value


class GmailSettings(BaseModel):
    """Where the Gmail API is, for Gmail-API accounts (the sender and the bouncer).

    - api_url (MAILFLEET_GMAIL__API_URL): the REST API's base, up to and including ``/gmail/v1``.
    - timeout_s (MAILFLEET_GMAIL__TIMEOUT_S): the most one request may take.
    """

    api_url: str = "https://gmail.googleapis.com/gmail/v1"
    timeout_s: float = Field(default=30.0, gt=0)


class ServiceSettings(BaseSettings):
    """Base for each service's Settings: MAILFLEET_POSTGRES__DSN, MAILFLEET_RABBIT__URL, ..."""

    model_config = SettingsConfigDict(
        env_prefix="MAILFLEET_", env_nested_delimiter="__", extra="ignore"
    )

    postgres: PostgresSettings = PostgresSettings()
    rabbit: RabbitSettings = RabbitSettings()
    tracing: TracingSettings = TracingSettings()
    log_level: str = "INFO"
