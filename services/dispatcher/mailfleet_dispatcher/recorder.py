"""The recorder: writes what senders and the tracker report into events, attempts and usage."""

import logging
import time
from datetime import UTC, datetime

from mailfleet_common import tracing
from mailfleet_common.db import Pool
from mailfleet_common.messages import AccountPaused, SendAttempts, TrackingHit, TrackingHits
from opentelemetry.trace import SpanKind, StatusCode

from mailfleet_dispatcher import metrics, queries

log = logging.getLogger(__name__)
_tracer = tracing.get_tracer("mailfleet_dispatcher")


async def record_send_attempts(pool: Pool, report: SendAttempts) -> int:
    """Record one report in one transaction; returns the attempts that were new."""
    async with pool.acquire() as conn, conn.transaction():
        attempts, events = await queries.record_attempts(conn, report.attempts)
    metrics.RECORDED.labels("send_attempts").inc(attempts)
    metrics.RECORDED.labels("events").inc(events)
    if attempts < len(report.attempts):
        log.info(
            "attempts already recorded were skipped",
            extra={"received": len(report.attempts), "new": attempts},
        )
    return attempts


async def record_account_paused(pool: Pool, event: AccountPaused) -> None:
    """Record an automatic pause as an 'account-paused' event."""
    async with pool.acquire() as conn:
        inserted = await queries.record_account_paused(
            conn, event.account_id, event.reason, event.paused_at
        )
    metrics.RECORDED.labels("events").inc(int(inserted))


async def record_tracking_hits(pool: Pool, batch: TrackingHits) -> int:
    """Record a batch of opens, clicks or unsubscribes; returns the hits that were new."""
    traced = [h for h in batch.hits if h.traceparent] if tracing.enabled() else None
    started_ns = time.time_ns()
    try:
        async with pool.acquire() as conn:
            outcome = await queries.record_tracking_hits(conn, batch.kind, batch.hits)
    except Exception as exc:
        if traced:
            _end_record_spans(batch.kind, traced, started_ns, exc)
        raise
    if traced:
        _end_record_spans(batch.kind, traced, started_ns, None)
    now = datetime.now(UTC)
    latency = metrics.TRACKING_RECORD_LATENCY.labels(metrics.TRACKING_KIND[batch.kind])
    for occurred_at in outcome.recorded_at:
        latency.observe(max((now - occurred_at).total_seconds(), 0.0))
    duplicate = len(batch.hits) - outcome.recorded - outcome.unknown
    metrics.RECORDED.labels("events").inc(outcome.recorded)
    metrics.TRACKING_HITS.labels(batch.kind, "recorded").inc(outcome.recorded)
    metrics.TRACKING_HITS.labels(batch.kind, "duplicate").inc(duplicate)
    metrics.TRACKING_HITS.labels(batch.kind, "unknown-message").inc(outcome.unknown)
    if outcome.unknown:
        log.warning(
            "tracking hits for unknown messages were dropped",
            extra={"kind": batch.kind, "received": len(batch.hits), "unknown": outcome.unknown},
        )
    return outcome.recorded


def _end_record_spans(
    kind: str, hits: list[TrackingHit], started_ns: int, error: Exception | None
) -> None:
    """One span per traced hit, over the statement that wrote its batch, in the hit's trace."""
    for hit in hits:
        assert hit.traceparent is not None  # noqa: S101 - only traced hits are passed
        span = _tracer.start_span(
            f"record {kind}",
            context=tracing.context_from(hit.traceparent),
            kind=SpanKind.CONSUMER,
            start_time=started_ns,
            attributes={"mailfleet.message_id": hit.message_id, "mailfleet.hit_key": hit.key},
        )
        if error is not None:
            span.record_exception(error)
            span.set_status(StatusCode.ERROR)
        span.end()
