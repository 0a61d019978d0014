"""The dispatcher's settings: MAILFLEET_DISPATCHER__TICK_MS, MAILFLEET_HTTP__PORT, ..."""

from mailfleet_common.settings import (
    AccountRateSettings,
    HttpSettings,
    ReplicaSettings,
    ServiceSettings,
)
from pydantic import BaseModel, Field


class DispatchSettings(BaseModel):
    """How often and how far ahead the dispatcher assigns, and when it gives up on others."""

    tick_ms: int = Field(default=200, ge=10)
    # Each account gets commands for about this many seconds of its pace ahead of time.
    lookahead_s: float = Field(default=5.0, gt=0)
    max_inflight: int = Field(default=500, ge=1)
    # Transactional messages pass the look-ahead: an account may hold this many more in
    # flight for them (its daily limit, warm-up and pace still hold).
    priority_headroom: int = Field(default=100, ge=1)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    # At most this many messages per tick, shared by the accounts: a large backlog is handed
    # out in several short transactions, so the first commands go out within milliseconds
    # instead of after one long one. A tick that hit the cap is followed by another at once.
    max_per_tick: int = Field(default=5000, ge=1)
    sweep_interval_s: float = Field(default=2.0, gt=0)
    # An account whose oldest assigned message has not moved for this long (plus its pace),
    # with nothing older in hand, gets its send commands again: they were lost.
    stall_s: float = Field(default=1.5, gt=0)
    stall_check_s: float = Field(default=0.5, gt=0)
    stranded_after_s: float = Field(default=60.0, ge=0)
    # Longer than any SMTP conversation (connect, login and DATA, each within the sender's
    # smtp_timeout_s): a message `sending` this long under a live replica is `uncertain`.
    sending_timeout_s: float = Field(default=600.0, gt=0)
    # How often the replica holding the fleet-gauge lock recomputes the fleet's gauges
    # (backlog, accounts, rates); the others try to take the lock as often.
    fleet_gauges_s: float = Field(default=15.0, gt=0)
    # How often the counters' deltas are folded into their buckets (reads add the deltas not
    # yet folded, so this bounds their cost, not their accuracy), at most this many rows a
    # transaction.
    counter_fold_s: float = Field(default=2.0, gt=0)
    counter_fold_rows: int = Field(default=20_000, ge=1)


class DispatcherHttp(HttpSettings):
    """HttpSettings on the dispatcher's own port: setting only MAILFLEET_HTTP__HOST keeps 8001."""

    port: int = Field(default=8001, ge=0, le=65535)


class Settings(ServiceSettings):
    http: DispatcherHttp = DispatcherHttp()
    dispatcher: DispatchSettings = DispatchSettings()
    replicas: ReplicaSettings = ReplicaSettings()
    # The bouncer's thresholds, exported with the rates they judge (MAILFLEET_BOUNCER__...).
    bouncer: AccountRateSettings = AccountRateSettings()
