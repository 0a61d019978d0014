"""The suppression list: addresses no message goes to, globally or for one campaign."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from mailfleet_api import pages, queries, schemas, suppressions
from mailfleet_api.deps import HEAVY, Cursor, DbConn, Operator, Principal, RowId, Viewer
from mailfleet_api.errors import NotFoundError, UnsupportedMediaTypeError

router = APIRouter(prefix="/api/suppressions", tags=["suppressions"])

Filters = Annotated[schemas.SuppressionFilter, Query()]

_CSV_BODY = {
    "requestBody": {
        "required": True,
        "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "The suppressions as CSV."}
}


def _source(principal: Principal) -> str:
    return f"api:{principal.key}"


def _is_utf8_csv(content_type: str) -> bool:
    media_type, *parameters = content_type.split(";")
    values = dict(p.strip().lower().partition("=")[::2] for p in parameters)
    charset = values.get("charset", "utf-8").strip('"')
    return media_type.strip().lower() == "text/csv" and charset in ("utf-8", "utf8")


@router.get("")
async def list_suppressions(
    conn: DbConn,
    _: Viewer,
    filters: Filters,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 50,
    cursor: Cursor = None,
) -> schemas.SuppressionPage:
    """List suppressions, newest first, a page at a time."""
    items, more = await queries.list_suppressions(conn, filters, limit, pages.after(cursor))
    return pages.cursor_page(
        schemas.SuppressionPage, items, more, limit, lambda s: (s.created_at, s.id)
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "The address was suppressed already."}},
)
async def add_suppression(
    body: schemas.SuppressionCreate, conn: DbConn, principal: Operator, response: Response
) -> schemas.SuppressionAdded:
    """Suppress an address and cancel its unsent messages; 200 if it was suppressed already."""
    campaign = body.campaign_id
    if campaign is not None and await queries.fetch_campaign_status(conn, campaign) is None:
        raise NotFoundError(f"no campaign {campaign}")
    async with conn.transaction():
        before = await queries.fetch_suppression_of(conn, body.email, body.campaign_id)
        cancelled = await queries.suppress_address(
            conn, body.email, body.campaign_id, body.reason, _source(principal), body.expires_at
        )
        stored = await queries.fetch_suppression_of(conn, body.email, body.campaign_id)
    assert stored is not None  # noqa: S101 - stored just now, in this transaction
    created = before is None or not before.active
    if not created:
        response.status_code = status.HTTP_200_OK
    return schemas.SuppressionAdded(suppression=stored, created=created, cancelled=cancelled)


@router.post(
    "/import",
    max_body_size=suppressions.MAX_IMPORT_BYTES,
    openapi_extra=_CSV_BODY,
    dependencies=[HEAVY],
)
async def import_suppressions(
    request: Request,
    conn: DbConn,
    principal: Operator,
    dry_run: Annotated[bool, Query(description="Only validate and count.")] = False,
) -> schemas.SuppressionImport:
    """Suppress the addresses of a CSV file (text/csv, UTF-8, up to 20 MB)."""
    if not _is_utf8_csv(request.headers.get("content-type", "")):
        raise UnsupportedMediaTypeError("send the file as text/csv, UTF-8")
    raw = await request.body()
    source = f"{_source(principal)}:import"
    return await suppressions.import_csv(conn, raw, source, dry_run)


@router.get(
    "/export", response_class=StreamingResponse, responses=_CSV_RESPONSE, dependencies=[HEAVY]
)
async def export_suppressions(conn: DbConn, _: Viewer, filters: Filters) -> StreamingResponse:
    """Download the matching suppressions as CSV, newest first (the filters of the list)."""
    return StreamingResponse(
        await suppressions.export_csv(conn, filters),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": "attachment; filename=suppressions.csv"},
    )


@router.get("/{suppression_id}")
async def get_suppression(suppression_id: RowId, conn: DbConn, _: Viewer) -> schemas.Suppression:
    """Show one suppression."""
    found = await queries.fetch_suppression(conn, suppression_id)
    if found is None:
        raise NotFoundError(f"no suppression {suppression_id}")
    return found


@router.delete("/{suppression_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_suppression(suppression_id: RowId, conn: DbConn, _: Operator) -> None:
    """Remove a suppression; messages it cancelled stay cancelled."""
    if not await queries.delete_suppression(conn, suppression_id):
        raise NotFoundError(f"no suppression {suppression_id}")
