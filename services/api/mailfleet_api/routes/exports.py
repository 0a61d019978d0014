"""Exports of messages, events and a campaign's results, streamed as CSV or JSON Lines."""

import json
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


def _file(*rows: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """The 200 answer of an export: the rows given, as an example in each format."""
    csv_example = ",".join(rows[0]) + "\n"
    csv_example += "".join(",".join(str(v) for v in row.values()) + "\n" for row in rows)
    jsonl_example = "".join(json.dumps(row) + "\n" for row in rows)
    examples = {"csv": csv_example, "jsonl": jsonl_example}
    return {
        200: {
            "content": {
                media: {"example": examples[fmt]} for fmt, media in exports.MEDIA_TYPES.items()
            },
            "description": "The rows, streamed.",
        }
    }


_MESSAGE_ROW = {
    "id": 1042, "campaign_id": "5f0c2a8e-3b1d-4c7a-9e2f-8d6b1a4c3e21",
    "email": "ann@example.com", "status": "sent", "attempts": 1, "last_code": 250,
    "created_at": "2026-03-02T09:00:00+00:00", "sent_at": "2026-03-02T09:00:04+00:00",
}  # fmt: skip
_EVENT_ROW = {
    "id": 88001, "occurred_at": "2026-03-02T09:12:30+00:00", "type": "opened",
    "campaign_id": "5f0c2a8e-3b1d-4c7a-9e2f-8d6b1a4c3e21", "message_id": 1042,
}  # fmt: skip
_RESULT_ROW = {
    "id": 1042, "email": "ann@example.com", "status": "sent", "attempts": 1,
    "opened": True, "clicked": False, "bounced": False, "complained": False,
}  # fmt: skip


async def _download(conn: DbConn, export: exports.Export, fmt: exports.Format, stem: str) -> Any:
    return StreamingResponse(
        await exports.stream(conn, export, fmt),
        media_type=exports.MEDIA_TYPES[fmt],
        headers=exports.headers(stem, fmt),
    )


@router.get("/api/messages/export", response_class=StreamingResponse, responses=_file(_MESSAGE_ROW))
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


@router.get("/api/events/export", response_class=StreamingResponse, responses=_file(_EVENT_ROW))
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
    "/api/campaigns/{campaign_id}/export",
    response_class=StreamingResponse,
    responses=_file(_RESULT_ROW),
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
