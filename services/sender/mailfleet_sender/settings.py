"""The sender's settings: shared sections plus delivery, retry and replica tuning."""

from mailfleet_common.settings import (
    CryptoSettings,
    GmailSettings,
    HttpSettings,
    OAuthSettings,
    ReplicaSettings,
    ServiceSettings,
    TemplateSettings,
    TrackingSettings,
)
from pydantic import BaseModel, Field


class SenderSettings(BaseModel):
    """Delivery, retry and replica tuning: MAILFLEET_SENDER__RETRY_BASE_S, ..."""

    # Replicas and accounts.
    heartbeat_s: float = Field(default=1.0, gt=0)
    account_poll_s: float = Field(default=2.0, gt=0)
    prefetch_batches: int = Field(default=2, ge=1)
    # Account consumers share channels: RabbitMQ allows 2,047 per connection.
    consumers_per_channel: int = Field(default=200, ge=1)
    # Queue declarations and consumer registrations in flight while subscribing many accounts.
    subscribe_concurrency: int = Field(default=64, ge=1)
    # Polls read the accounts changed since the previous one; every so often, all of them.
    account_full_sync_s: float = Field(default=300.0, gt=0)
    # Group commit of claims and outcomes.
    flush_linger_ms: float = Field(default=0.5, ge=0)
    flush_max: int = Field(default=2000, ge=1)
    flush_concurrency: int = Field(default=3, ge=1)
    # SMTP.
    max_connections_per_account: int = Field(default=1, ge=1)
    smtp_timeout_s: float = Field(default=30.0, gt=0)
    smtp_validate_certs: bool = True
    helo_name: str = ""  # empty: this host's name
    # SMTP sessions this replica keeps open (0: as many as its open-file limit allows, less
    # a reserve), and opens at once, whatever the number of accounts.
    max_sessions: int = Field(default=0, ge=0)
    max_connecting: int = Field(default=32, ge=1)
    # An account whose server cannot be reached waits (base doubling up to cap) between
    # tries, with its messages left as they are; after this many failures in a row (about 8
    # minutes with the defaults) it is paused.
    connect_backoff_base_s: float = Field(default=2.0, gt=0)
    connect_backoff_cap_s: float = Field(default=120.0, gt=0)
    connect_failures_to_pause: int = Field(default=10, ge=1)
    # An account's SMTP sessions close after this long without a message to send.
    smtp_idle_s: float = Field(default=10.0, gt=0)
    # Gmail API: quota units per minute a Gmail-API account may spend on sending (Google
    # allows 15,000 per user, a send costs 100; the rest is a margin for the bouncer's reads
    # of the same mailbox and for clock skew). Sends are spaced accordingly, per account.
    gmail_units_per_minute: int = Field(default=12_000, ge=100)
    # Retries of temporary failures.
    retry_base_s: float = Field(default=60.0, ge=0)
    retry_cap_s: float = Field(default=3600.0, ge=0)
    max_attempts: int = Field(default=5, ge=1)
    # Reporting.
    report_max: int = Field(default=5000, ge=1)
    report_linger_ms: float = Field(default=100.0, ge=0)


class SenderHttp(HttpSettings):
    """HttpSettings on the sender's own port: setting only MAILFLEET_HTTP__HOST keeps 8002."""

    port: int = Field(default=8002, ge=0, le=65535)


class Settings(ServiceSettings):
    """MAILFLEET_* environment, e.g. MAILFLEET_SENDER__RETRY_BASE_S, MAILFLEET_HTTP__PORT."""

    http: SenderHttp = SenderHttp()
    crypto: CryptoSettings = CryptoSettings()
    oauth: OAuthSettings = OAuthSettings()
    gmail: GmailSettings = GmailSettings()
    sender: SenderSettings = SenderSettings()
    replicas: ReplicaSettings = ReplicaSettings()
    templates: TemplateSettings = TemplateSettings()
    # Required: every campaign message carries signed unsubscribe URLs (MAILFLEET_TRACKING__*).
    tracking: TrackingSettings = TrackingSettings()
