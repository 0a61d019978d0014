"""Exports of messages, events and a campaign's results, streamed as CSV or JSON Lines."""

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from mailfleet_api import exports, privacy
from mailfleet_api.deps import DbConn, SettingsDep, Viewer
from mailfleet_api.errors import NotFoundError
from mailfleet_api.queries import events as event_queries
from mailfleet_api.queries import messages as message_queries
from mailfleet_api.schemas import events as event_schemas
from mailfleet_api.schemas import messages as message_schemas

router = APIRouter(tags=["exports"])

Format = Annotated[
    exports.Format, Query(description="csv (a header row first) or jsonl (JSON Lines).")
]
_FILE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {media: {} for media in exports.MEDIA_TYPES.values()},
        "description": "The rows, streamed.",
    }
}


async def _download(conn: DbConn, export: exports.Export, fmt: exports.Format, stem: str) -> Any:
    return StreamingResponse(
        await exports.stream(conn, export, fmt),
        media_type=exports.MEDIA_TYPES[fmt],
        headers=exports.headers(stem, fmt),
    )


@router.get("/api/messages/export", response_class=StreamingResponse, responses=_FILE)
async def export_messages(
    conn: DbConn,
    _: Viewer,
    filters: Annotated[message_schemas.MessageFilter, Query()],
    format: Format = "csv",
) -> StreamingResponse:
    """Download the matching messages (the list's filters and order) as CSV or JSON Lines."""
    export = message_queries.message_export(filters)
    response: StreamingResponse = await _download(conn, export, format, "messages")
    return response


@router.get("/api/events/export", response_class=StreamingResponse, responses=_FILE)
async def export_events(
    conn: DbConn,
    _: Viewer,
    settings: SettingsDep,
    filters: Annotated[event_schemas.EventFilter, Query()],
    format: Format = "csv",
) -> StreamingResponse:
    """Download the matching events, newest first, as CSV or JSON Lines."""
    shown = settings.privacy.ip
    export = event_queries.event_export(filters)
    export = exports.Export(
        export.query,
        export.args,
        export.columns,
        lambda row: row | {"data": privacy.event_data(row["data"], shown)},
    )
    response: StreamingResponse = await _download(conn, export, format, "events")
    return response


@router.get(
    "/api/campaigns/{campaign_id}/export", response_class=StreamingResponse, responses=_FILE
)
async def export_campaign_results(
    campaign_id: UUID,
    conn: DbConn,
    _: Viewer,
    filters: Annotated[message_schemas.CampaignResultFilter, Query()],
    format: Format = "csv",
) -> StreamingResponse:
    """Download a campaign's results: one row per message, its status, attempts and engagement."""
    if not await message_queries.campaign_exists(conn, campaign_id):
        raise NotFoundError(f"no campaign {campaign_id}")
    export = message_queries.campaign_export(campaign_id, filters)
    response: StreamingResponse = await _download(conn, export, format, f"campaign-{campaign_id}")
    return response
