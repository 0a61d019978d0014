"""The webhook worker's settings: MAILFLEET_WEBHOOKS__RETRY_SCHEDULE_S, __MAX_IN_FLIGHT, ..."""

from mailfleet_common.settings import CryptoSettings, HttpSettings, ServiceSettings
from pydantic import BaseModel, Field, model_validator

# Seconds before the 2nd, 3rd, ... attempt: about 25.6 hours from the first to the last.
DEFAULT_RETRY_SCHEDULE_S = [5.0, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 36000]


class WebhookSettings(BaseModel):
    """How deliveries are claimed, posted, retried, and when an endpoint is disabled.

    Claiming and posting:
    - batch: deliveries claimed per query (FOR UPDATE SKIP LOCKED: replicas share the work).
    - max_in_flight, per_endpoint: requests open at once in this replica, overall and to one
      endpoint (claims take no more of an endpoint's deliveries than its room).
    - lease_s: how long a claimed delivery is this replica's; a replica that dies leaves it
      due again after this. Must exceed timeout_s.
    - poll_s: the longest wait for new work (a notification wakes the worker sooner).
    - connect_timeout_s, timeout_s: one request's limits (connect; whole request).
    - max_response_bytes: the most of a response body read, and kept in the delivery log.
    - allow_private_destinations: post to endpoints whose host resolves to loopback, private,
      link-local or reserved addresses too. Off: such an attempt fails without a request (the
      platform's own network is not a place users may send signed requests to).

    Retrying and disabling:
    - retry_schedule_s: the delay before each retry, in order; a delivery failing once more
      than its length is given up (status failed). jitter: each delay is drawn uniformly
      within +/- this fraction of it, so retries of a burst spread out.
    - disable_after_failures and disable_after_s: an endpoint whose last attempts all failed,
      at least this many of them over at least this long, is disabled with a reason.
    """

    batch: int = Field(default=50, ge=1, le=1000)
    max_in_flight: int = Field(default=64, ge=1)
    per_endpoint: int = Field(default=8, ge=1)
    lease_s: float = Field(default=300.0, gt=0)
    poll_s: float = Field(default=1.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=15.0, gt=0)
    max_response_bytes: int = Field(default=4096, ge=0, le=1024 * 1024)
    allow_private_destinations: bool = False
    retry_schedule_s: list[float] = Field(default=DEFAULT_RETRY_SCHEDULE_S, max_length=50)
    jitter: float = Field(default=0.2, ge=0, le=1)
    disable_after_failures: int = Field(default=20, ge=1)
    disable_after_s: float = Field(default=24 * 3600.0, ge=0)

    @model_validator(mode="after")
    def _lease_outlasts_a_request(self) -> "WebhookSettings":
        if self.lease_s <= self.timeout_s:
            raise ValueError("lease_s must be longer than timeout_s")
        return self


class WebhooksHttp(HttpSettings):
    """HttpSettings on the worker's own port: setting only MAILFLEET_HTTP__HOST keeps 8005."""

    port: int = Field(default=8005, ge=0, le=65535)


class Settings(ServiceSettings):
    http: WebhooksHttp = WebhooksHttp()
    crypto: CryptoSettings = CryptoSettings()
    webhooks: WebhookSettings = WebhookSettings()
