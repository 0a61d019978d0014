"""Prometheus metrics of the dispatcher (served on /metrics)."""

from mailfleet_common.messages import TrackingKind
from prometheus_client import Counter, Histogram

MESSAGES_ASSIGNED = Counter(
    "mailfleet_dispatcher_messages_assigned_total", "Messages assigned to an account."
)
BATCHES_PUBLISHED = Counter(
    "mailfleet_dispatcher_send_batches_published_total", "SendBatch commands published."
)
BATCH_PUBLISH_FAILURES = Counter(
    "mailfleet_dispatcher_send_batch_failures_total",
    "SendBatch commands that could not be published (the stall watch issues them again).",
)
TICK_SECONDS = Histogram(
    "mailfleet_dispatcher_tick_seconds",
    "Duration of one assignment tick, commit and publish included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
URGENT_RENOTICED = Counter(
    "mailfleet_dispatcher_urgent_renoticed_total",
    "Transactional messages noticed again to the senders, still unclaimed a second after.",
)
TICK_ERRORS = Counter("mailfleet_dispatcher_tick_errors_total", "Assignment ticks that failed.")
SWEPT = Counter(
    "mailfleet_dispatcher_swept_total",
    "Rows changed by the periodic sweeps, by sweep.",
    ["sweep"],
)
SWEEP_ERRORS = Counter("mailfleet_dispatcher_sweep_errors_total", "Sweep passes that failed.")
RECORDED = Counter(
    "mailfleet_dispatcher_recorded_rows_total",
    "Rows written by the recorder, by table (redeliveries write none).",
    ["table"],
)
TRACKING_HITS = Counter(
    "mailfleet_dispatcher_tracking_hits_total",
    "Tracking hits received, by kind and outcome: recorded, duplicate (already recorded) or "
    "unknown-message (dropped).",
    ["kind", "outcome"],
)
TRACKING_RECORD_LATENCY = Histogram(
    "mailfleet_tracking_record_latency_seconds",
    "From a tracker hit (the time the tracker gave it) to its event being recorded, by kind "
    "(open, click, unsubscribe); redeliveries are not observed again.",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
TRACKING_KIND: dict[TrackingKind, str] = {
    "opened": "open",
    "clicked": "click",
    "unsubscribed": "unsubscribe",
}
# Every kind's series exists from the start: rate() over a series born with its first hit
# would miss that hit, and a dashboard would show nothing until the second.
for _kind in TRACKING_KIND.values():
    TRACKING_RECORD_LATENCY.labels(_kind)
