"""Transactional sends: POST /api/messages, one message or a small batch, ahead of campaigns."""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, status

from mailfleet_api import enqueue, transactional
from mailfleet_api.deps import BrokerDep, DbConn, Operator, SettingsDep
from mailfleet_api.events import announce_recipients
from mailfleet_api.schemas import transactional as tx_schemas

router = APIRouter(prefix="/api/messages", tags=["messages"])


def _inline_schema() -> dict[str, Any]:
    schema = tx_schemas.TransactionalRequest.model_json_schema(ref_template="#/$defs/{model}")
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None:
                return inline(definitions[ref.rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inline_schema()}},
    }
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=tx_schemas.TransactionalAccepted,
    openapi_extra=_BODY,
)
async def send_messages(
    request: Request,
    conn: DbConn,
    broker: BrokerDep,
    settings: SettingsDep,
    principal: Operator,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    """Send transactional messages now, ahead of campaigns; 202 with their ids and refusals."""
    raw = await request.body()
    result = await transactional.send(
        conn, raw, settings, principal.user_id, principal.key, idempotency_key
    )
    if result.accepted and result.stream_id is not None:
        await announce_recipients(broker, result.stream_id, result.accepted, transactional=True)
    return Response(
        enqueue.encode(result.response), result.status_code, media_type="application/json"
    )
