"""Messages left `uncertain`: the operator's list, and resolving them as sent or to resend."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from mailfleet_api import pages, queries, schemas
from mailfleet_api.deps import Cursor, DbConn, Limit, Operator, Principal, Viewer

router = APIRouter(prefix="/api/messages/uncertain", tags=["uncertain messages"])

_RESOLVED_IDS_SHOWN = 10_000


def resolver(principal: Principal) -> str:
    """Who resolved, as recorded: api:user:<id> or api:key:<id>."""
    return f"api:{principal.key}"


@router.get("")
async def list_uncertain_messages(
    conn: DbConn,
    _: Viewer,
    filters: Annotated[schemas.UncertainFilter, Query()],
    limit: Limit = 50,
    cursor: Cursor = None,
) -> schemas.UncertainPage:
    """List messages that may or may not have been delivered, newest first, a page at a time."""
    items, more = await queries.list_uncertain(conn, filters, limit, pages.after(cursor))
    return pages.cursor_page(
        schemas.UncertainPage, items, more, limit, lambda m: (m.flagged_at, m.id)
    )


@router.post(
    "/resolve",
    responses={
        status.HTTP_202_ACCEPTED: {
            "model": schemas.UncertainResolved,
            "description": "Resolved to resend: the messages are queued again, to go out later.",
        }
    },
)
async def resolve_uncertain_messages(
    body: schemas.UncertainResolve, conn: DbConn, principal: Operator, response: Response
) -> schemas.UncertainResolved:
    """Resolve uncertain messages by ids or by filter: mark them sent, or queue them again.

    Resending needs `accept_duplicate_risk: true` and answers 202 (the messages go out later);
    marking sent answers 200. Each resolution is recorded with who made it and when, and as
    an `uncertain-resolved` event.
    """
    if body.resolution == "resend":
        response.status_code = status.HTTP_202_ACCEPTED
    by = resolver(principal)
    resolved = await queries.resolve_uncertain(
        conn, body.resolution, body.message_ids, body.filter, by, body.note
    )
    done = set(resolved)
    return schemas.UncertainResolved(
        resolution=body.resolution,
        resolved=len(resolved),
        message_ids=resolved[:_RESOLVED_IDS_SHOWN],
        not_uncertain=[i for i in body.message_ids or () if i not in done],
        resolved_by=by,
        resolved_at=datetime.now(UTC),
    )


@router.get("/resolutions")
async def list_uncertain_resolutions(
    conn: DbConn,
    _: Viewer,
    message_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> schemas.UncertainResolutionPage:
    """List how uncertain messages were resolved, by whom and when, newest first."""
    after = pages.after(cursor)
    items, more = await queries.list_uncertain_resolutions(conn, message_id, limit, after)
    return pages.cursor_page(
        schemas.UncertainResolutionPage, items, more, limit, lambda r: (r.resolved_at, r.id)
    )
