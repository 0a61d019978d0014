"""Events: the history, newest first, and the live feed for following it."""

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Query

from mailfleet_api import feed, pages, privacy
from mailfleet_api.deps import Cursor, DbConn, Limit, SettingsDep, Viewer
from mailfleet_api.queries import events as queries
from mailfleet_api.schemas import events as schemas

router = APIRouter(prefix="/api/events", tags=["events"])

FeedCursor = Annotated[
    str | None,
    Query(max_length=2000, description="The next_cursor of the previous answer."),
]


def shown_event(row: asyncpg.Record, shown: privacy.IpShown) -> schemas.Event:
    """An event as the API shows it: a tracking hit's IP as the privacy setting allows."""
    values: dict[str, Any] = dict(row)
    values["data"] = privacy.event_data(values["data"], shown)
    return schemas.Event.model_validate(values)


@router.get("")
async def list_events(
    conn: DbConn,
    _: Viewer,
    settings: SettingsDep,
    filters: Annotated[schemas.EventFilter, Query()],
    limit: Limit = 50,
    cursor: Cursor = None,
) -> schemas.EventPage:
    """List events, newest first, a page at a time."""
    after = None if cursor is None else pages.decode_cursor(cursor)
    rows, more = await queries.list_events(conn, filters, limit, after)
    items = [shown_event(r, settings.privacy.ip) for r in rows]
    next_cursor = pages.encode_cursor(items[-1].occurred_at, items[-1].id) if more else None
    return schemas.EventPage(items=items, limit=limit, next_cursor=next_cursor)


@router.get("/feed")
async def follow_events(
    conn: DbConn,
    _: Viewer,
    settings: SettingsDep,
    filters: Annotated[schemas.FeedFilter, Query()],
    after: FeedCursor = None,
    limit: Limit = 100,
) -> schemas.EventFeed:
    """The events after a cursor, oldest first; pass next_cursor back to go on (tailing)."""
    start = None if after is None else feed.Position.decode(after)
    rows, end = await queries.read_feed(conn, start, filters, limit)
    items = [shown_event(r, settings.privacy.ip) for r in rows]
    return schemas.EventFeed(items=items, next_cursor=end.encode())
