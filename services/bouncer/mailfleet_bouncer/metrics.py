"""Prometheus metrics of the bouncer (served on /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

REPORTS = Counter(
    "mailfleet_bouncer_reports_total",
    "Messages read from mailboxes, by kind (bounce, complaint, reply, auto-reply, unsubscribe,"
    " unrecognized) and result (matched, unmatched, kept, duplicate).",
    ["kind", "result"],
)
PROBLEMS = Counter(
    "mailfleet_bouncer_problems_total",
    "Messages read with something wrong in them that was tolerated (malformed, truncated, ...).",
    ["problem"],
)
ACTIONS = Counter(
    "mailfleet_bouncer_actions_total",
    "What reports caused: suppressions by reason, soft bounces counted, accounts paused.",
    ["action"],
)
MAILBOX_ERRORS = Counter(
    "mailfleet_bouncer_mailbox_errors_total",
    "Mailbox polls that failed, by stage (credentials, connect, read, gmail, database, ownership).",
    ["stage"],
)
MAILBOXES_OWNED = Gauge(
    "mailfleet_bouncer_mailboxes_owned", "Mailboxes this replica reads at the moment."
)
POLL_SECONDS = Histogram(
    "mailfleet_bouncer_poll_seconds",
    "Time to read and process one mailbox's new messages.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300),
)
OUTBOX_PUBLISHED = Counter(
    "mailfleet_bouncer_feedback_published_total",
    "Feedback events published to the bus, by kind.",
    ["kind"],
)
