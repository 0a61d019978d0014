"""Webhook endpoints, their delivery log, and replays (the outbox itself is filled by trigger)."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from mailfleet_common.db import Conn

from mailfleet_api.queries.pages import newest_first, param
from mailfleet_api.schemas import webhooks as schemas

# The most deliveries one replay request queues.
MAX_REPLAY = 100_000

_ENDPOINT_COLUMNS = """
    id, owner_id, url, description, event_types, enabled, disabled_reason, disabled_at,
    failing_since, consecutive_failures, created_at, updated_at
"""
# Keyset pages run over (created_at, seq): `id` is the uuid.
_ENDPOINTS_BY_SEQ = """
    SELECT * FROM (
        SELECT seq AS id, id AS endpoint_id, owner_id, url, description, event_types, enabled,
               disabled_reason, disabled_at, failing_since, consecutive_failures, created_at,
               updated_at
        FROM webhook_endpoints) e
"""
_DELIVERY_COLUMNS = """
    id, endpoint_id, 'msg_' || event_id AS webhook_id, event_type, occurred_at, status,
    attempts, CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at,
    last_status_code, last_error, delivered_at, replay_of, created_at, payload
"""
_ATTEMPT_COLUMNS = """
    id, delivery_id, attempt, attempted_at, status_code, latency_ms, response, error
"""


def _endpoint(row: asyncpg.Record) -> schemas.WebhookEndpoint:
    values = dict(row)
    if "endpoint_id" in values:
        values["id"] = values.pop("endpoint_id")
    return schemas.WebhookEndpoint.model_validate(values)


def event_types_of(webhook_types: Sequence[str]) -> list[str]:
    """The `events.type` values behind webhook types (the reverse of webhook_event_type)."""
    return [t.removeprefix("message.").replace(".", "-") for t in webhook_types]


async def insert_endpoint(
    conn: Conn, owner_id: UUID, body: schemas.WebhookEndpointCreate, secret_enc: bytes
) -> schemas.WebhookEndpoint:
    row = await conn.fetchrow(
        f"""
        INSERT INTO webhook_endpoints (owner_id, url, description, event_types, secret_enc)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING {_ENDPOINT_COLUMNS}
        """,  # noqa: S608 - spliced constant only
        owner_id,
        body.url,
        body.description,
        list(body.event_types),
        secret_enc,
    )
    assert row is not None  # noqa: S101 - INSERT ... RETURNING returns its row
    return _endpoint(row)


async def fetch_endpoint(
    conn: Conn, endpoint_id: UUID, owner_id: UUID | None
) -> schemas.WebhookEndpoint | None:
    """The endpoint, if it exists and (owner_id given) belongs to that user."""
    row = await conn.fetchrow(
        f"""
        SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints
        WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2)
        """,  # noqa: S608 - spliced constant only
        endpoint_id,
        owner_id,
    )
    return None if row is None else _endpoint(row)


async def list_endpoints(
    conn: Conn, owner_id: UUID | None, limit: int, after: tuple[datetime, int] | None
) -> tuple[list[schemas.WebhookEndpoint], tuple[datetime, int] | None]:
    """A page of endpoints (one owner's, or all), newest first; and the next page's cursor."""
    args: list[Any] = []
    where = "true" if owner_id is None else f"owner_id = {param(args, owner_id)}"
    rows, more = await newest_first(
        conn, _ENDPOINTS_BY_SEQ, "created_at", where, args, limit, after
    )
    following = (rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return [_endpoint(r) for r in rows], following


async def update_endpoint(
    conn: Conn, endpoint_id: UUID, changes: dict[str, Any]
) -> schemas.WebhookEndpoint | None:
    """Apply the given changes; enabling clears the reason and the run of failures."""
    row = await conn.fetchrow(
        f"""
        UPDATE webhook_endpoints
        SET url = coalesce($2, url),
            event_types = coalesce($3, event_types),
            description = coalesce($4, description),
            enabled = coalesce($5, enabled),
            disabled_reason = CASE WHEN $5 IS NULL THEN disabled_reason
                                   WHEN $5 THEN NULL ELSE 'disabled through the API' END,
            disabled_at = CASE WHEN $5 IS NULL THEN disabled_at
                               WHEN $5 THEN NULL ELSE now() END,
            consecutive_failures = CASE WHEN $5 THEN 0 ELSE consecutive_failures END,
            failing_since = CASE WHEN $5 THEN NULL ELSE failing_since END,
            updated_at = now()
        WHERE id = $1
        RETURNING {_ENDPOINT_COLUMNS}
        """,  # noqa: S608 - spliced constant only
        endpoint_id,
        changes.get("url"),
        changes.get("event_types"),
        changes.get("description"),
        changes.get("enabled"),
    )
    return None if row is None else _endpoint(row)


async def set_endpoint_secret(
    conn: Conn, endpoint_id: UUID, secret_enc: bytes
) -> schemas.WebhookEndpoint | None:
    row = await conn.fetchrow(
        f"""
        UPDATE webhook_endpoints SET secret_enc = $2, updated_at = now() WHERE id = $1
        RETURNING {_ENDPOINT_COLUMNS}
        """,  # noqa: S608 - spliced constant only
        endpoint_id,
        secret_enc,
    )
    return None if row is None else _endpoint(row)


async def delete_endpoint(conn: Conn, endpoint_id: UUID) -> bool:
    """Delete the endpoint with its deliveries and their log."""
    return await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id) == (
        "DELETE 1"
    )


async def list_deliveries(
    conn: Conn,
    endpoint_id: UUID,
    status: str | None,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[schemas.WebhookDelivery], bool]:
    args: list[Any] = [endpoint_id]
    where = "endpoint_id = $1"
    if status is not None:
        where += f" AND status = {param(args, status)}"
    select = f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries"  # noqa: S608 - constant
    rows, more = await newest_first(conn, select, "created_at", where, args, limit, after)
    return [schemas.WebhookDelivery.model_validate(dict(r)) for r in rows], more


async def list_attempts(
    conn: Conn,
    endpoint_id: UUID,
    delivery_id: int | None,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[schemas.WebhookAttempt], bool]:
    args: list[Any] = [endpoint_id]
    where = "endpoint_id = $1"
    if delivery_id is not None:
        where += f" AND delivery_id = {param(args, delivery_id)}"
    select = f"SELECT {_ATTEMPT_COLUMNS} FROM webhook_attempts"  # noqa: S608 - constant
    rows, more = await newest_first(conn, select, "attempted_at", where, args, limit, after)
    return [schemas.WebhookAttempt.model_validate(dict(r)) for r in rows], more


async def replay_delivery(conn: Conn, endpoint_id: UUID, delivery_id: int) -> bool:
    """Queue a copy of the delivery (same webhook-id and body); False if there is none."""
    status = await conn.execute(
        """
        INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, occurred_at, payload,
                                        replay_of)
        SELECT endpoint_id, event_id, event_type, occurred_at, payload, id
        FROM webhook_deliveries WHERE id = $1 AND endpoint_id = $2
        """,
        delivery_id,
        endpoint_id,
    )
    return status == "INSERT 0 1"


async def replay_range(
    conn: Conn,
    endpoint_id: UUID,
    webhook_types: Sequence[str],
    since: datetime,
    until: datetime,
    only_failed: bool,
) -> int:
    """Queue a delivery of each of the range's events of these types; returns how many.

    Read from `events` (what happened, whether or not the endpoint was enabled then), at most
    MAX_REPLAY, oldest first.
    """
    queued = await conn.fetchval(
        """
        WITH queued AS (
            INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, occurred_at,
                                            payload)
            SELECT $1, n.id, webhook_event_type(n.type), n.occurred_at,
                   webhook_payload(webhook_event_type(n.type), n.occurred_at, n.message_id,
                                   n.campaign_id, n.account_id, m.email, n.data)
            FROM events n
            LEFT JOIN messages m ON m.id = n.message_id
            WHERE n.type = ANY ($2::text[]) AND n.occurred_at >= $3 AND n.occurred_at < $4
              AND (NOT $5 OR NOT EXISTS (
                  SELECT 1 FROM webhook_deliveries d
                  WHERE d.endpoint_id = $1 AND d.event_id = n.id AND d.status = 'delivered'))
            ORDER BY n.occurred_at, n.id
            LIMIT $6
            RETURNING 1
        )
        SELECT count(*) FROM queued
        """,
        endpoint_id,
        event_types_of(webhook_types),
        since,
        until,
        only_failed,
        MAX_REPLAY,
    )
    return int(queued)


async def fetch_endpoint_secrets(conn: Conn) -> list[asyncpg.Record]:
    """Every endpoint's encrypted secret, row-locked for re-encryption."""
    return await conn.fetch(
        """
        SELECT id, url, secret_enc FROM webhook_endpoints
        WHERE secret_enc IS NOT NULL ORDER BY id FOR UPDATE
        """
    )


async def set_endpoint_secret_enc(conn: Conn, endpoint_id: UUID, secret_enc: bytes) -> None:
    await conn.execute(
        "UPDATE webhook_endpoints SET secret_enc = $2 WHERE id = $1", endpoint_id, secret_enc
    )


async def forget_endpoint_secret(conn: Conn, endpoint_id: UUID, reason: str) -> None:
    """Drop a secret no key can decrypt; the endpoint is disabled until it is rotated."""
    await conn.execute(
        """
        UPDATE webhook_endpoints
        SET secret_enc = NULL, enabled = false, disabled_reason = $2, disabled_at = now(),
            updated_at = now()
        WHERE id = $1
        """,
        endpoint_id,
        reason,
    )


async def has_secret(conn: Conn, endpoint_id: UUID) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT secret_enc IS NOT NULL FROM webhook_endpoints WHERE id = $1 FOR UPDATE",
            endpoint_id,
        )
    )


async def record_account_status(
    conn: Conn, account_id: UUID, status: str, previous: str, reason: str | None
) -> None:
    """Record an account paused, or resumed (paused to active), through the API.

    The sender and bouncer record their pauses themselves (pause_account()).
    """
    kind = "account-paused" if status == "paused" else "account-resumed"
    if kind == "account-resumed" and status != "active":
        return  # paused -> disabled: neither
    await conn.execute(
        """
        INSERT INTO events (occurred_at, type, account_id, data)
        VALUES (now(), $1, $2, jsonb_build_object('reason', $3::text, 'source', 'api',
                                                  'previous_status', $4::text))
        """,
        kind,
        account_id,
        reason,
        previous,
    )
