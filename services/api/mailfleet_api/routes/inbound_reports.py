"""What the bouncer read from the accounts' mailboxes: bounces, complaints, replies and the rest."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from mailfleet_api import pages, queries, schemas
from mailfleet_api.deps import Cursor, DbConn, Limit, Operator, RowId, Viewer
from mailfleet_api.errors import NotFoundError

router = APIRouter(prefix="/api/admin/inbound-reports", tags=["inbound reports"])

_RAW_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"message/rfc822": {}}, "description": "The message as it was read."},
    404: {"description": "No such report, or nothing of it was kept."},
}


def _why(kind: str) -> str:
    if kind != "unrecognized":
        return f"it was recognized (kind {kind}), and only unrecognized messages are kept"
    return "the bouncer stored none of its bytes"


@router.get("")
async def list_inbound_reports(
    conn: DbConn,
    _: Viewer,
    filters: Annotated[schemas.InboundReportFilter, Query()],
    limit: Limit = 50,
    cursor: Cursor = None,
) -> schemas.InboundReportPage:
    """List the messages read from the accounts' mailboxes, newest first, a page at a time."""
    after = pages.after(cursor)
    items, more = await queries.list_inbound_reports(conn, filters, limit, after)
    return pages.cursor_page(
        schemas.InboundReportPage, items, more, limit, lambda r: (r.received_at, r.id)
    )


@router.get("/{report_id}")
async def get_inbound_report(report_id: RowId, conn: DbConn, _: Viewer) -> schemas.InboundReport:
    """Show one message read from a mailbox: what it was and what was done about it."""
    found = await queries.fetch_inbound_report(conn, report_id)
    if found is None:
        raise NotFoundError(f"no inbound report {report_id}")
    return found


@router.get("/{report_id}/raw", response_class=Response, responses=_RAW_RESPONSE)
async def get_inbound_report_raw(report_id: RowId, conn: DbConn, _: Operator) -> Response:
    """Download the message as it was kept (only unrecognized ones are, up to a size cap).

    Operators only: a message can hold personal data.
    """
    found = await queries.fetch_inbound_report_raw(conn, report_id)
    if found is None:
        raise NotFoundError(f"no inbound report {report_id}")
    if found["raw"] is None:
        raise NotFoundError(
            f"nothing of inbound report {report_id} was kept: {_why(found['kind'])}"
        )
    return Response(
        bytes(found["raw"]),
        media_type="message/rfc822",
        headers={"Content-Disposition": f"attachment; filename=report-{report_id}.eml"},
    )
