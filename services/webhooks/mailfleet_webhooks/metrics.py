"""Prometheus metrics of the webhook worker (served on /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

ATTEMPTS = Counter(
    "mailfleet_webhooks_attempts_total",
    "Webhook requests made, by result: delivered (2xx), http_error (any other status),"
    " timeout, network (connection refused, reset, TLS, ...), refused (not sent: the"
    " endpoint's host is not a public address).",
    ["result"],
)
for _result in ("delivered", "http_error", "timeout", "network", "refused"):
    ATTEMPTS.labels(_result)
ATTEMPT_SECONDS = Histogram(
    "mailfleet_webhooks_attempt_seconds",
    "Time from sending a webhook request to reading its response (or giving up).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GIVEN_UP = Counter(
    "mailfleet_webhooks_deliveries_failed_total",
    "Deliveries given up after their last scheduled retry.",
)
DISABLED = Counter(
    "mailfleet_webhooks_endpoints_disabled_total",
    "Endpoints disabled for failing persistently.",
)
IN_FLIGHT = Gauge("mailfleet_webhooks_in_flight", "Webhook requests open at the moment.")
