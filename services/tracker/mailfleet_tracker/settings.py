"""The tracker's settings: MAILFLEET_TRACKER__ALLOWED_DOMAINS, MAILFLEET_HTTP__PORT, ..."""

from typing import Annotated, Any

from mailfleet_common.settings import HttpSettings, ServiceSettings, TrackingSettings
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode


class TrackerSettings(BaseModel):
    """What the tracker accepts, how it tells machines from people, and how it buffers events.

    - allowed_domains: comma-separated; a click is redirected only to a host equal to one of
      them or below one (``example.com`` admits ``www.example.com``). Empty admits any host.
    - machine_window_s: a hit this soon after the message was built is a scanner's, not a
      reader's: link scanners and privacy proxies fetch everything within seconds of delivery.
    - trust_forwarded_for: take the client address from the first X-Forwarded-For entry. Only
      behind a proxy that sets it; otherwise anyone can write any address there.
    - buffer_max: hits held while the broker is away; beyond it new hits are dropped.
    - batch_max, linger_ms: a TrackingHits message carries up to batch_max hits, and waits up
      to linger_ms for more before it goes.
    - unsubscribe_settle_s: how long an unsubscribe waits for messages already being sent.
    - shutdown_flush_s: how long shutdown waits for the broker to take what is buffered.
    """

    allowed_domains: Annotated[list[str], NoDecode] = []
    machine_window_s: float = Field(default=2.0, ge=0)
    trust_forwarded_for: bool = False
    buffer_max: int = Field(default=100_000, ge=1)
    batch_max: int = Field(default=1000, ge=1, le=10_000)  # TrackingHits holds 10,000 at most
    linger_ms: int = Field(default=50, ge=0)
    unsubscribe_settle_s: float = Field(default=15.0, ge=0)
    shutdown_flush_s: float = Field(default=10.0, ge=0)

    @field_validator("allowed_domains", mode="before")
    @classmethod
    def _split_domains(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return [str(d).strip().strip(".").lower() for d in value if str(d).strip(" .")]
        return value


class TrackerHttp(HttpSettings):
    """HttpSettings on the tracker's own port: setting only MAILFLEET_HTTP__HOST keeps 8003."""

    port: int = Field(default=8003, ge=0, le=65535)


class Settings(ServiceSettings):
    http: TrackerHttp = TrackerHttp()
    tracking: TrackingSettings = TrackingSettings()
    tracker: TrackerSettings = TrackerSettings()
