"""Prometheus metrics of the sender."""

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "mailfleet_sender_messages_total",
    "Delivery attempts by account and outcome (sent, deferred, failed; requeued: the account "
    "was paused for its configuration; held: its server could not be reached).",
    ["account", "outcome"],
)
SKIPPED = Counter(
    "mailfleet_sender_skipped_total",
    "Commanded messages not sent, by reason: suppressed (cancelled at claim time) or "
    "not_claimable (already handled, cancelled, or account/campaign halted).",
    ["reason"],
)
SUPPRESSED = SKIPPED.labels("suppressed")
NOT_CLAIMABLE = SKIPPED.labels("not_claimable")
SMTP_SECONDS = Histogram(
    "mailfleet_sender_smtp_seconds",
    "Time for one SMTP transaction (MAIL FROM to the reply to DATA).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# From a message sent at once to one held back by limits, warm-up and retries for days.
# fmt: off
_SECONDS_TO_DAYS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400,
                    43200, 86400, 172800)
# fmt: on
DELIVERY_LATENCY = Histogram(
    "mailfleet_delivery_latency_seconds",
    "From a message's enqueueing to the SMTP server accepting it (its 2xx to DATA), observed "
    "by the sender replica that heard the 2xx.",
    buckets=_SECONDS_TO_DAYS,
)
FLUSH_SIZE = Histogram(
    "mailfleet_sender_flush_size",
    "Claims plus outcomes written by one group commit.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
FLUSH_SECONDS = Histogram(
    "mailfleet_sender_flush_seconds",
    "Duration of one group commit round trip.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
ACCOUNTS = Gauge(
    "mailfleet_sender_accounts",
    "Account queues this replica consumes, by role (owned, standby).",
    ["role"],
)
CONNECTS = Counter(
    "mailfleet_sender_smtp_connects_total",
    "SMTP sessions this replica tried to open, by outcome: ok, unreachable (refused, DNS, "
    "timeout; the account waits and tries again), config (the account is paused), exhausted "
    "(this process is out of file descriptors).",
    ["outcome"],
)
GMAIL_REQUESTS = Counter(
    "mailfleet_sender_gmail_requests_total",
    "Gmail API messages.send requests, by outcome: sent, unauthorized (token refused; tried "
    "once more with a fresh one), throttled (quota: the account waits), daily_limit (it waits "
    "for the next UTC day), invalid (the message fails), server_error (retried later), config "
    "(the account is paused), unreachable (no connection; the account waits), exhausted (this "
    "replica's connections were all busy), uncertain (no answer after the request was sent).",
    ["outcome"],
)
GMAIL_SECONDS = Histogram(
    "mailfleet_sender_gmail_seconds",
    "Time for one Gmail API messages.send request that was answered.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONNECTING = Gauge(
    "mailfleet_sender_smtp_connecting",
    "SMTP sessions being opened right now (bounded by MAILFLEET_SENDER__MAX_CONNECTING).",
)
SESSIONS = Gauge(
    "mailfleet_sender_smtp_sessions",
    "SMTP sessions open or being opened (bounded by MAILFLEET_SENDER__MAX_SESSIONS).",
)
SESSIONS_EVICTED = Counter(
    "mailfleet_sender_smtp_sessions_evicted_total",
    "Idle SMTP sessions closed to make room for another account's (at MAX_SESSIONS).",
)
CHANNELS = Gauge(
    "mailfleet_sender_consumer_channels",
    "AMQP channels the account consumers share.",
)
CONSUMER_RESTORES = Counter(
    "mailfleet_sender_consumer_restores_total",
    "Account consumers registered again after their channel closed or the broker cancelled them.",
)
HANDOVERS = Counter(
    "mailfleet_sender_consumer_handovers_total",
    "Account consumers this replica moved to the back of their queue's line, handing the "
    "account to the replica that owns it (after replicas joined or left).",
)
HANDOVERS_PENDING = Gauge(
    "mailfleet_sender_consumer_handovers_pending",
    "Account consumers waiting to hand their account over (each after its command in hand).",
)
COMMAND_LAG = Gauge(
    "mailfleet_sender_command_lag_seconds",
    "How long send commands waited before this replica started them (the largest wait "
    "since the previous heartbeat, decaying); the dispatcher's stall watch allows for it.",
)
REPLICAS_LIVE = Gauge(
    "mailfleet_sender_replicas_live",
    "Sender replicas this replica sees alive (itself included): accounts are shared among them.",
)
