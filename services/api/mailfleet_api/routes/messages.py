"""Messages: the list with its filters, and one message with everything that happened to it."""

from typing import Annotated, Any

from fastapi import APIRouter, Query

from mailfleet_api import pages, privacy
from mailfleet_api.deps import Cursor, DbConn, Limit, RowId, SettingsDep, Viewer
from mailfleet_api.errors import NotFoundError
from mailfleet_api.queries import messages as queries
from mailfleet_api.schemas import messages as schemas

router = APIRouter(prefix="/api/messages", tags=["messages"])

Filters = Annotated[schemas.MessageFilter, Query()]


@router.get("")
async def list_messages(
    conn: DbConn, _: Viewer, filters: Filters, limit: Limit = 50, cursor: Cursor = None
) -> schemas.MessagePage:
    """List messages, newest first (by sent time when a sent bound is given), a page at a time."""
    after = None if cursor is None else pages.decode_cursor(cursor)
    items, more = await queries.list_messages(conn, filters, limit, after)
    next_cursor = None
    if more:
        last = items[-1]
        next_cursor = pages.encode_cursor(queries.message_position(last, filters), last.id)
    return schemas.MessagePage(items=items, limit=limit, next_cursor=next_cursor)


@router.get("/{message_id}")
async def get_message(
    message_id: RowId, conn: DbConn, _: Viewer, settings: SettingsDep
) -> schemas.MessageDetail:
    """Show a message: its status, every SMTP attempt, bounces and replies, opens and clicks."""
    message = await queries.fetch_message(conn, message_id)
    if message is None:
        raise NotFoundError(f"no message {message_id}")
    attempts = await queries.fetch_attempts(conn, message_id)
    feedback = await queries.fetch_feedback(conn, message_id)
    tracking, total = await queries.fetch_tracking(conn, message_id)
    shown = settings.privacy.ip
    return schemas.MessageDetail(
        **message.model_dump(),
        send_attempts=[schemas.SendAttemptShown.model_validate(dict(r)) for r in attempts],
        feedback=[_feedback(r["type"], r["occurred_at"], r["data"]) for r in feedback],
        tracking=[_tracking(r["type"], r["occurred_at"], r["data"], shown) for r in tracking],
        tracking_total=total,
    )


def _feedback(kind: str, at: Any, data: dict[str, Any]) -> schemas.FeedbackShown:
    fields = {k: data.get(k) for k in schemas.FeedbackShown.model_fields if k in data}
    return schemas.FeedbackShown.model_validate(fields | {"type": kind, "occurred_at": at})


def _tracking(
    kind: str, at: Any, data: dict[str, Any], shown: privacy.IpShown
) -> schemas.TrackingShown:
    return schemas.TrackingShown(
        type=kind,
        occurred_at=at,
        ip=privacy.shown_ip(data.get("ip"), shown),
        user_agent=data.get("user_agent"),
        url=data.get("url"),
        machine=bool(data.get("machine", False)),
        machine_reason=data.get("machine_reason"),
    )
