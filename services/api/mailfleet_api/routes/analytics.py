"""Analytics: sends, failures, feedback and engagement per hour or day, from the counters."""

from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from mailfleet_common.db import Conn

from mailfleet_api.deps import DbConn, Viewer
from mailfleet_api.errors import InvalidError, NotFoundError
from mailfleet_api.queries import counters
from mailfleet_api.schemas import analytics as schemas

router = APIRouter(prefix="/api/analytics", tags=["analytics"])

STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# The longest period a request may cover, by bucket size: at most a few hundred buckets.
MAX_SPAN = {"hour": timedelta(days=31), "day": timedelta(days=366)}
DEFAULT_SPAN = {"hour": timedelta(hours=24), "day": timedelta(days=30)}

From = Annotated[
    datetime | None,
    Query(
        alias="from",
        description="Start (ISO 8601; without an offset, UTC), rounded down to its bucket. "
        "Default: `to` less 24 hours (hour) or 30 days (day).",
    ),
]
To = Annotated[
    datetime | None, Query(description="End, exclusive (ISO 8601; without an offset, UTC).")
]
Bucket = Annotated[schemas.BucketSize, Query(description="Bucket size; days are UTC days.")]


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _period(start: datetime | None, end: datetime | None, bucket: str) -> tuple[datetime, datetime]:
    """The period asked for, in UTC, its start rounded down to a bucket; refuses bad ones."""
    end = datetime.now(UTC) if end is None else _utc(end)
    start = end - DEFAULT_SPAN[bucket] if start is None else _utc(start)
    if start >= end:
        raise InvalidError("`from` must be before `to`")
    if end - start > MAX_SPAN[bucket]:
        raise InvalidError(f"a period of {bucket}s covers at most {MAX_SPAN[bucket].days} days")
    if bucket == "day":
        start = start.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        start = start.replace(minute=0, second=0, microsecond=0)
    return start, end


async def _timeline(
    conn: Conn,
    campaign_id: UUID,
    account_id: UUID,
    start: datetime | None,
    end: datetime | None,
    bucket: schemas.BucketSize,
) -> schemas.Timeline:
    start, end = _period(start, end, bucket)
    step = STEP[bucket]
    # Every hour a bucket touches: the last one may end after `to`.
    until = start + -(-(end - start) // step) * step
    rows = {
        r["start"]: r
        for r in await counters.timeline(conn, campaign_id, account_id, start, until, bucket)
    }
    buckets = []
    moment = start
    while moment < end:
        row = rows.get(moment)
        counts = {c: row[c] for c in counters.EVENT_COUNTERS} if row else {}
        buckets.append(schemas.BucketCounts.model_validate({"start": moment, **_zero(counts)}))
        moment += step
    totals = {c: sum(getattr(b, c) for b in buckets) for c in counters.EVENT_COUNTERS}
    return schemas.Timeline(
        campaign_id=None if campaign_id == counters.EVERY else campaign_id,
        account_id=None if account_id == counters.EVERY else account_id,
        from_=start,
        to=end,
        bucket=bucket,
        totals=schemas.Counts.model_validate(totals),
        buckets=buckets,
    )


def _zero(counts: dict[str, int]) -> dict[str, int]:
    return {c: counts.get(c, 0) for c in counters.EVENT_COUNTERS}


@router.get("/overview")
async def overview(
    conn: DbConn, _: Viewer, from_: From = None, to: To = None, bucket: Bucket = "day"
) -> schemas.Timeline:
    """Every campaign's and account's counts per hour or day."""
    return await _timeline(conn, counters.EVERY, counters.EVERY, from_, to, bucket)


@router.get("/campaigns/{campaign_id}/timeline")
async def campaign_timeline(
    campaign_id: UUID,
    conn: DbConn,
    _: Viewer,
    from_: From = None,
    to: To = None,
    bucket: Bucket = "day",
) -> schemas.Timeline:
    """One campaign's counts per hour or day."""
    if not await conn.fetchval("SELECT true FROM campaigns WHERE id = $1", campaign_id):
        raise NotFoundError(f"no campaign {campaign_id}")
    return await _timeline(conn, campaign_id, counters.EVERY, from_, to, bucket)


@router.get("/accounts/{account_id}")
async def account_timeline(
    account_id: UUID,
    conn: DbConn,
    _: Viewer,
    from_: From = None,
    to: To = None,
    bucket: Bucket = "day",
) -> schemas.Timeline:
    """One account's counts per hour or day, over every campaign."""
    if not await conn.fetchval("SELECT true FROM accounts WHERE id = $1", account_id):
        raise NotFoundError(f"no account {account_id}")
    return await _timeline(conn, counters.EVERY, account_id, from_, to, bucket)
