"""Webhook endpoints: registering them, their delivery log, and replaying deliveries.

An endpoint belongs to the user who created it: each user sees and changes only their own,
an admin every one. Another user's endpoint answers 404, as one that does not exist.
"""

import base64
import secrets
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, status

from mailfleet_api import pages
from mailfleet_api.deps import (
    Cursor,
    DbConn,
    Limit,
    Operator,
    Principal,
    RowId,
    SecretBoxDep,
    Viewer,
)
from mailfleet_api.errors import ConflictError, NotFoundError
from mailfleet_api.queries import webhooks as queries
from mailfleet_api.schemas import webhooks as schemas

router = APIRouter(prefix="/api/webhooks/endpoints", tags=["webhooks"])

_SECRET_BYTES = 24


def new_secret() -> str:
    """A Standard Webhooks signing secret: whsec_ and the base64 of random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def _owner_scope(principal: Principal) -> UUID | None:
    return None if principal.role == "admin" else principal.user_id


async def _endpoint(
    conn: DbConn, endpoint_id: UUID, principal: Principal
) -> schemas.WebhookEndpoint:
    found = await queries.fetch_endpoint(conn, endpoint_id, _owner_scope(principal))
    if found is None:
        raise NotFoundError(f"no webhook endpoint {endpoint_id}")
    return found


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_webhook_endpoint(
    body: schemas.WebhookEndpointCreate, conn: DbConn, box: SecretBoxDep, principal: Operator
) -> schemas.WebhookEndpointCreated:
    """Register an endpoint; its signing secret is in this answer only (rotate to see a new one)."""
    secret = new_secret()
    endpoint = await queries.insert_endpoint(conn, principal.user_id, body, box.encrypt(secret))
    return schemas.WebhookEndpointCreated(**endpoint.model_dump(), secret=secret)


@router.get("")
async def list_webhook_endpoints(
    conn: DbConn, principal: Viewer, limit: Limit = 50, cursor: Cursor = None
) -> schemas.WebhookEndpointPage:
    """List your endpoints (an admin: everyone's), newest first, a page at a time."""
    after = None if cursor is None else pages.decode_cursor(cursor)
    items, following = await queries.list_endpoints(conn, _owner_scope(principal), limit, after)
    next_cursor = None if following is None else pages.encode_cursor(*following)
    return schemas.WebhookEndpointPage(items=items, limit=limit, next_cursor=next_cursor)


@router.get("/{endpoint_id}")
async def get_webhook_endpoint(
    endpoint_id: UUID, conn: DbConn, principal: Viewer
) -> schemas.WebhookEndpoint:
    """Show one endpoint, with why it was disabled if it was."""
    return await _endpoint(conn, endpoint_id, principal)


@router.patch("/{endpoint_id}")
async def update_webhook_endpoint(
    endpoint_id: UUID, body: schemas.WebhookEndpointUpdate, conn: DbConn, principal: Operator
) -> schemas.WebhookEndpoint:
    """Change an endpoint; `enabled: true` re-enables one that was disabled, failures forgotten."""
    async with conn.transaction():
        current = await _endpoint(conn, endpoint_id, principal)
        if body.enabled and not await queries.has_secret(conn, endpoint_id):
            raise ConflictError("its secret was lost with a crypto key: rotate it first")
        changes = body.model_dump(exclude_unset=True)
        updated = await queries.update_endpoint(conn, current.id, changes)
    assert updated is not None  # noqa: S101 - locked in this transaction
    return updated


@router.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook_endpoint(endpoint_id: UUID, conn: DbConn, principal: Operator) -> None:
    """Delete an endpoint, its pending deliveries and its delivery log."""
    await _endpoint(conn, endpoint_id, principal)
    if not await queries.delete_endpoint(conn, endpoint_id):
        raise NotFoundError(f"no webhook endpoint {endpoint_id}")


@router.post("/{endpoint_id}/rotate-secret")
async def rotate_webhook_secret(
    endpoint_id: UUID, conn: DbConn, box: SecretBoxDep, principal: Operator
) -> schemas.WebhookEndpointCreated:
    """Give the endpoint a new signing secret, returned this once; the old one stops at once."""
    await _endpoint(conn, endpoint_id, principal)
    secret = new_secret()
    endpoint = await queries.set_endpoint_secret(conn, endpoint_id, box.encrypt(secret))
    if endpoint is None:
        raise NotFoundError(f"no webhook endpoint {endpoint_id}")
    return schemas.WebhookEndpointCreated(**endpoint.model_dump(), secret=secret)


@router.get("/{endpoint_id}/deliveries")
async def list_webhook_deliveries(
    endpoint_id: UUID,
    conn: DbConn,
    principal: Viewer,
    delivery_status: Annotated[
        schemas.DeliveryStatus | None, Query(alias="status", description="Only these.")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> schemas.WebhookDeliveryPage:
    """The endpoint's deliveries (one per event), newest first, a page at a time."""
    await _endpoint(conn, endpoint_id, principal)
    after = None if cursor is None else pages.decode_cursor(cursor)
    items, more = await queries.list_deliveries(conn, endpoint_id, delivery_status, limit, after)
    next_cursor = pages.encode_cursor(items[-1].created_at, items[-1].id) if more else None
    return schemas.WebhookDeliveryPage(items=items, limit=limit, next_cursor=next_cursor)


@router.get("/{endpoint_id}/attempts")
async def list_webhook_attempts(
    endpoint_id: UUID,
    conn: DbConn,
    principal: Viewer,
    delivery_id: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Only its.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> schemas.WebhookAttemptPage:
    """The endpoint's delivery log: every request, its status, latency and answer, newest first."""
    await _endpoint(conn, endpoint_id, principal)
    after = None if cursor is None else pages.decode_cursor(cursor)
    items, more = await queries.list_attempts(conn, endpoint_id, delivery_id, limit, after)
    next_cursor = pages.encode_cursor(items[-1].attempted_at, items[-1].id) if more else None
    return schemas.WebhookAttemptPage(items=items, limit=limit, next_cursor=next_cursor)


@router.post("/{endpoint_id}/deliveries/{delivery_id}/replay", status_code=status.HTTP_202_ACCEPTED)
async def replay_webhook_delivery(
    endpoint_id: UUID, delivery_id: RowId, conn: DbConn, principal: Operator
) -> schemas.WebhookReplayQueued:
    """Send a delivery again (same webhook-id and body), as a new delivery queued now."""
    await _endpoint(conn, endpoint_id, principal)
    if not await queries.replay_delivery(conn, endpoint_id, delivery_id):
        raise NotFoundError(f"no delivery {delivery_id} to this endpoint")
    return schemas.WebhookReplayQueued(queued=1)


@router.post("/{endpoint_id}/replay", status_code=status.HTTP_202_ACCEPTED)
async def replay_webhook_events(
    endpoint_id: UUID, body: schemas.WebhookReplay, conn: DbConn, principal: Operator
) -> schemas.WebhookReplayQueued:
    """Send again the events of a time range (up to 100,000 a call), oldest first."""
    endpoint = await _endpoint(conn, endpoint_id, principal)
    wanted = [t for t in endpoint.event_types if body.event_types is None or t in body.event_types]
    queued = await queries.replay_range(
        conn, endpoint_id, wanted, body.since, body.until, body.only_failed
    )
    return schemas.WebhookReplayQueued(queued=queued)
