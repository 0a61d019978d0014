"""The message queue: enqueue recipients, see its depth, clear failed messages."""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, status

from mailfleet_api import enqueue, queries, schemas
from mailfleet_api.deps import HEAVY, BrokerDep, DbConn, Operator, SettingsDep, Viewer
from mailfleet_api.events import announce_recipients

router = APIRouter(prefix="/api/queue", tags=["queue"])


def _inline_schema(model: type[schemas.EnqueueRequest]) -> dict[str, Any]:
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    items = schema["properties"]["recipients"]["items"]
    schema["properties"]["recipients"]["items"] = definitions[items["$ref"].rsplit("/", 1)[1]]
    return schema


_ENQUEUE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inline_schema(schemas.EnqueueRequest)}},
    }
}


@router.post(
    "/enqueue",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.EnqueueResult,
    openapi_extra=_ENQUEUE_BODY,
    dependencies=[HEAVY],
)
async def enqueue_recipients(
    request: Request,
    conn: DbConn,
    broker: BrokerDep,
    settings: SettingsDep,
    principal: Operator,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    """Queue recipients of a campaign (202); how many were accepted and why others were not."""
    # The body is parsed from raw bytes by pydantic directly: for 10,000 recipients this is
    # several times faster than FastAPI's json.loads + validate path.
    raw = await request.body()
    result = await enqueue.enqueue(conn, raw, settings.enqueue, principal.key, idempotency_key)
    if result.accepted and result.campaign_id is not None:
        await announce_recipients(broker, result.campaign_id, result.accepted)
    return Response(
        enqueue.encode(result.response), result.status_code, media_type="application/json"
    )


@router.get("/status")
async def queue_status(conn: DbConn, _: Viewer) -> schemas.QueueStatus:
    """Messages in each status, overall and per account."""
    return schemas.QueueStatus(
        by_status=await queries.count_messages_by_status(conn),
        by_account=await queries.count_account_messages_by_status(conn),
    )


@router.post("/clear")
async def clear_failed(
    conn: DbConn, _: Operator, body: schemas.QueueClear | None = None
) -> schemas.QueueCleared:
    """Delete failed messages, of one campaign or of all; returns how many."""
    campaign_id = None if body is None else body.campaign_id
    return schemas.QueueCleared(removed=await queries.delete_failed_messages(conn, campaign_id))
