"""SQL of events: the filtered history, newest first, and the live feed in id order."""

from datetime import datetime
from typing import Any

import asyncpg
from mailfleet_common.db import Conn

from mailfleet_api import feed
from mailfleet_api.exports import Export
from mailfleet_api.queries.pages import newest_first, param
from mailfleet_api.schemas import events as schemas

EVENT_COLUMNS = ("id", "occurred_at", "type", "campaign_id", "message_id", "account_id", "data")
_SELECT = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"  # noqa: S608 - constants
# Ids the feed reads past per call looking for events that match its filters.
FEED_SCAN = 20_000
# A feed started without a cursor waits on gaps among this many of the newest ids.
FEED_START_WINDOW = 1000


def _where(filters: schemas.EventFilter | schemas.FeedFilter, args: list[Any]) -> str:
    """The condition for the filters given; their values are appended to `args`."""
    clauses: list[str] = []
    if filters.type is not None:
        clauses.append(f"type = {param(args, filters.type)}")
    if filters.campaign_id is not None:
        clauses.append(f"campaign_id = {param(args, filters.campaign_id)}")
    if isinstance(filters, schemas.EventFilter):
        if filters.account_id is not None:
            clauses.append(f"account_id = {param(args, filters.account_id)}")
        if filters.message_id is not None:
            clauses.append(f"message_id = {param(args, filters.message_id)}")
        if filters.occurred_after is not None:
            clauses.append(f"occurred_at >= {param(args, filters.occurred_after)}")
        if filters.occurred_before is not None:
            clauses.append(f"occurred_at < {param(args, filters.occurred_before)}")
    return " AND ".join(clauses) or "true"


async def list_events(
    conn: Conn,
    filters: schemas.EventFilter,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[asyncpg.Record], bool]:
    """A page of matching events, newest first, after the given (occurred_at, id)."""
    args: list[Any] = []
    where = _where(filters, args)
    return await newest_first(conn, _SELECT, "occurred_at", where, args, limit, after)


def event_export(filters: schemas.EventFilter) -> Export:
    """The matching events, newest first."""
    args: list[Any] = []
    where = _where(filters, args)
    return Export(
        f"{_SELECT} WHERE {where} ORDER BY occurred_at DESC, id DESC",
        args,
        EVENT_COLUMNS,
    )


async def read_feed(
    conn: Conn, start: feed.Position | None, filters: schemas.FeedFilter, limit: int
) -> tuple[list[asyncpg.Record], feed.Position]:
    """The matching events after `start`, oldest first, that no late commit can precede.

    Without a start, the feed begins at its end: no events, and a position after the newest
    (before any gap among the newest FEED_START_WINDOW ids, so what commits late there still
    follows). One snapshot for the whole call (repeatable read): the ids seen, the gaps judged
    and the rows read agree.
    """
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        state = await conn.fetchrow(
            """
            SELECT pg_current_snapshot()::text AS snapshot,
                   (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms
            """
        )
        assert state is not None  # noqa: S101 - a SELECT without FROM returns one row
        snapshot = feed.Snapshot.parse(state["snapshot"])
        if snapshot.xip:
            snapshot = snapshot.without(await _foreign_xids(conn))
        if start is None:
            newest = await conn.fetch(
                "SELECT id FROM events ORDER BY id DESC LIMIT $1", FEED_START_WINDOW
            )
            window = sorted(r["id"] for r in newest)
            if not window:
                return [], feed.Position(0)
            return [], feed.safe_end(
                feed.Position(window[0] - 1), window, snapshot, state["now_ms"]
            )
        ids = await conn.fetch(
            "SELECT id FROM events WHERE id > $1 ORDER BY id LIMIT $2", start.after, FEED_SCAN
        )
        end = feed.safe_end(start, [r["id"] for r in ids], snapshot, state["now_ms"])
        if end.after == start.after:
            return [], end
        args: list[Any] = [start.after, end.after]
        where = _where(filters, args)
        rows = await conn.fetch(
            f"{_SELECT} WHERE id > $1 AND id <= $2 AND {where} "
            f"ORDER BY id LIMIT {param(args, limit)}",
            *args,
        )
    if len(rows) == limit:
        end = feed.Position(rows[-1]["id"], end.gap)
    return rows, end


async def _foreign_xids(conn: Conn) -> set[int]:
    """Transactions of other databases of the cluster: they cannot be writing our events.

    A gap waits only on the transactions that may hold its ids; leaving these out keeps a long
    transaction elsewhere from holding the feed up. Sessions whose database is not shown to
    this role are not left out.
    """
    rows = await conn.fetch(
        """
        SELECT backend_xid::text::bigint AS xid FROM pg_stat_activity
        WHERE backend_xid IS NOT NULL AND datname IS NOT NULL
          AND datname <> current_database()
        """
    )
    return {r["xid"] for r in rows}
