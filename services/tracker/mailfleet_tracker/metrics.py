"""Prometheus metrics of the tracker (served on /metrics).

Label children used per request are bound here once: ``.labels()`` on every request would
cost a lock and a dictionary lookup more than the pixel itself.
"""

from prometheus_client import Counter, Gauge, Histogram

KINDS = ("opened", "clicked", "unsubscribed")

REQUESTS = Counter(
    "mailfleet_tracker_requests_total",
    "Requests to tracking URLs, by route (open, click, unsubscribe, other) and result.",
    ["route", "result"],
)


class RouteResults:
    """The request counters of one route, one per result, bound once."""

    def __init__(self, route: str) -> None:
        self.ok = REQUESTS.labels(route, "ok")
        self.not_found = REQUESTS.labels(route, "not_found")
        self.method_not_allowed = REQUESTS.labels(route, "method_not_allowed")
        self.too_large = REQUESTS.labels(route, "too_large")
        self.unavailable = REQUESTS.labels(route, "unavailable")


OPEN = RouteResults("open")
CLICK = RouteResults("click")
UNSUBSCRIBE = RouteResults("unsubscribe")
OTHER = RouteResults("other")

_HITS = Counter(
    "mailfleet_tracker_hits_total",
    "Hits accepted into the buffer, by kind: each is published to the bus.",
    ["kind"],
)
HITS = {kind: _HITS.labels(kind) for kind in KINDS}
_PUBLISHED = Counter(
    "mailfleet_tracker_hits_published_total",
    "Hits the broker confirmed, by kind.",
    ["kind"],
)
PUBLISHED = {kind: _PUBLISHED.labels(kind) for kind in KINDS}
BUFFERED = Gauge("mailfleet_tracker_hits_buffered", "Hits waiting for the broker's confirm.")
DROPPED = Counter(
    "mailfleet_tracker_events_dropped_total",
    "Hits dropped because the buffer was full (the broker was away too long).",
)
PUBLISH_FAILURES = Counter(
    "mailfleet_tracker_publish_failures_total",
    "Batches the broker did not confirm (not connected, timed out, refused); all are retried.",
)
BROKER_CONNECTED = Gauge(
    "mailfleet_tracker_broker_connected", "1 while the publisher is connected to RabbitMQ."
)
UNSUBSCRIBE_SECONDS = Histogram(
    "mailfleet_tracker_unsubscribe_seconds",
    "Time to perform an unsubscribe, waiting for messages being sent included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UNSETTLED = Counter(
    "mailfleet_tracker_unsubscribe_unsettled_total",
    "Unsubscribes answered while a message to the address was still being sent.",
)
