"""The bouncer's settings: MAILFLEET_BOUNCER__POLL_S, MAILFLEET_BOUNCER__BOUNCE_RATE_MAX, ..."""

from mailfleet_common.settings import (
    AccountRateSettings,
    CryptoSettings,
    GmailSettings,
    HttpSettings,
    OAuthSettings,
    ServiceSettings,
    TrackingSettings,
)
from pydantic import Field


class BouncerSettings(AccountRateSettings):
    """How mailboxes are read and what the bouncer does about what it finds.

    Reading:
    - poll_s: how often each mailbox is looked at for new messages.
    - fetch_batch: messages fetched per IMAP round trip (at most 100: the IMAP client parses
      a response with one stack frame per line).
    - max_message_bytes: a message larger than this is read only up to it (and marked
      truncated): a DSN's report sits at the start, a 50 MB attachment is not needed.
    - keep_raw_bytes: how much of a message nothing could make sense of is kept in
      inbound_reports for an operator to look at.
    - imap_timeout_s: one IMAP command's limit before the mailbox is dropped and retried.
    - rebalance_s: how often a replica re-counts live replicas and takes or gives up mailboxes.
    - imap_ca_file: a PEM bundle of further CAs to trust for IMAP over TLS (a private CA);
      the system's CAs are trusted either way.
    - gmail_processed_label: the label Gmail-API mailboxes' processed messages get (created
      if absent).
    - gmail_quota_per_minute: the Gmail API quota units the bouncer spends per mailbox and
      minute, its share of Google's 15,000 per user (sending a message costs 100 of them).
    - gmail_backoff_s: how long a mailbox is left alone when Gmail says its quota is spent
      without saying until when.

    Acting:
    - soft_bounce_limit within soft_bounce_window_days: that many of an address's messages
      soft-bounced (a message's repeated delay notices count once) suppress it, for
      soft_suppress_days (0: for good).
    - bounce_rate_max, complaint_rate_max, rate_window_sends, rate_min_sends: see
      AccountRateSettings (shared with the dispatcher's fleet gauges).
    """

    poll_s: float = Field(default=30.0, gt=0)
    fetch_batch: int = Field(default=50, ge=1, le=100)  # see imap.UID_GROUP
    max_message_bytes: int = Field(default=5 * 1024 * 1024, ge=64 * 1024)
    keep_raw_bytes: int = Field(default=256 * 1024, ge=0)
    imap_timeout_s: float = Field(default=30.0, gt=0)
    rebalance_s: float = Field(default=10.0, gt=0)
    imap_ca_file: str = ""
    gmail_processed_label: str = Field(default="mailfleet/processed", min_length=1)
    gmail_quota_per_minute: int = Field(default=5000, ge=50, le=15_000)
    gmail_backoff_s: float = Field(default=60.0, gt=0)

    soft_bounce_limit: int = Field(default=3, ge=1)
    soft_bounce_window_days: float = Field(default=7.0, gt=0)
    soft_suppress_days: float = Field(default=30.0, ge=0)


class BouncerHttp(HttpSettings):
    """HttpSettings on the bouncer's own port: setting only MAILFLEET_HTTP__HOST keeps 8004."""

    port: int = Field(default=8004, ge=0, le=65535)


class Settings(ServiceSettings):
    http: BouncerHttp = BouncerHttp()
    crypto: CryptoSettings = CryptoSettings()
    oauth: OAuthSettings = OAuthSettings()
    gmail: GmailSettings = GmailSettings()
    tracking: TrackingSettings = TrackingSettings()
    bouncer: BouncerSettings = BouncerSettings()
