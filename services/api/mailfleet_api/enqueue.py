"""Enqueueing recipients: screening, duplicate and suppression checks, idempotent storage."""

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import anyio.to_thread
from fastapi.exceptions import RequestValidationError
from mailfleet_common import tracing
from mailfleet_common.db import Conn
from pydantic import ValidationError

from mailfleet_api import queries, schemas
from mailfleet_api.errors import ConflictError, InvalidError, NotFoundError, TooLargeError
from mailfleet_api.queries import transactional as tx_queries
from mailfleet_api.recipients import Candidate, RecipientScreen, Rejection
from mailfleet_api.settings import EnqueueSettings

MAX_IDEMPOTENCY_KEY_CHARS = 200
# The messages are queued; they are delivered later. A replay answers what was first
# answered (200 for keys stored before enqueue answered 202).
ACCEPTED = 202
# Recipients screened (in a worker thread) and stored per round trip.
_CHUNK = 1000


@dataclass(frozen=True)
class Enqueued:
    status_code: int
    response: dict[str, Any]
    campaign_id: UUID | None = None
    accepted: int = 0  # 0 on a replay: nothing new to announce


class KeyTakenError(Exception):
    """Another request committed this idempotency key first; roll back and replay it."""


def parse_request(raw: bytes, settings: EnqueueSettings) -> schemas.EnqueueRequest:
    """Parse the raw body straight from bytes (pydantic's fast path), within the size limit."""
    try:
        request = schemas.EnqueueRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    if len(request.recipients) > settings.max_recipients:
        raise TooLargeError(
            f"{len(request.recipients)} recipients; at most {settings.max_recipients} per request"
        )
    return request


def check_idempotency_key(key: str) -> None:
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise InvalidError(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters"
        )


def replay(stored: Any, request_hash: bytes) -> Enqueued:
    """The stored answer to an Idempotency-Key, if it was used with this very body."""
    if bytes(stored["request_hash"]) != request_hash:
        raise InvalidError("Idempotency-Key was already used with a different request body")
    return Enqueued(stored["status_code"], stored["response"])


async def _store(
    conn: Conn, campaign_id: UUID, candidates: list[Candidate], rejections: list[Rejection]
) -> int:
    """Insert the candidates that are not suppressed; reject the rest. Returns the count."""
    suppressed = await queries.suppressed_among(conn, campaign_id, [c.email for c in candidates])
    storable = [c for c in candidates if c.email not in suppressed]
    inserted = await queries.insert_messages(
        conn,
        campaign_id,
        [c.email for c in storable],
        [c.name for c in storable],
        [c.variables_json for c in storable],
        tracing.current_traceparent(),
    )
    for c in candidates:
        if c.email in suppressed:
            rejections.append(Rejection(c.index, c.email, "suppressed"))
        elif c.email not in inserted:
            rejections.append(Rejection(c.index, c.email, "already in campaign"))
    return len(inserted)


async def _screen_and_store(
    conn: Conn, request: schemas.EnqueueRequest, settings: EnqueueSettings
) -> tuple[int, list[Rejection]]:
    """Screen chunk n+1 in a worker thread while PostgreSQL stores chunk n.

    Address validation is CPU-bound in this process and the inserts are CPU-bound in the
    database's, so on two cores the two overlap instead of adding up.
    """
    screen = RecipientScreen(settings.max_variables_bytes)
    recipients = request.recipients
    rejections: list[Rejection] = []
    accepted = 0
    pending: tuple[list[Candidate], list[Rejection]] | None = None
    for start in range(0, len(recipients), _CHUNK):
        chunk = recipients[start : start + _CHUNK]
        if pending is None:
            pending = screen.screen(chunk, start)
            continue
        screening = asyncio.ensure_future(anyio.to_thread.run_sync(screen.screen, chunk, start))
        try:
            candidates, rejected = pending
            rejections += rejected
            accepted += await _store(conn, request.campaign_id, candidates, rejections)
        finally:
            pending = await screening
    if pending is not None:
        candidates, rejected = pending
        rejections += rejected
        accepted += await _store(conn, request.campaign_id, candidates, rejections)
    rejections.sort(key=lambda r: r.index)
    return accepted, rejections


async def enqueue(
    conn: Conn,
    raw: bytes,
    settings: EnqueueSettings,
    principal: str,
    idempotency_key: str | None,
) -> Enqueued:
    """Store the acceptable recipients of one request as queued messages, atomically."""
    request_hash = hashlib.sha256(raw).digest()
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
        stored = await queries.fetch_idempotent_response(conn, principal, idempotency_key)
        if stored is not None and stored["status_code"]:
            return replay(stored, request_hash)

    request = parse_request(raw, settings)
    campaign_id = request.campaign_id
    try:
        async with conn.transaction():
            if idempotency_key is not None and not await queries.claim_idempotency_key(
                conn, principal, idempotency_key, request_hash
            ):
                raise KeyTakenError
            status = await queries.lock_campaign_status(conn, campaign_id)
            if status is None:
                raise NotFoundError(f"no campaign {campaign_id}")
            if status == "cancelled":
                raise ConflictError("the campaign is cancelled")
            if await tx_queries.is_transactional(conn, campaign_id):
                raise ConflictError("a transactional stream takes messages at /api/messages")
            if status == "completed":
                await queries.reopen_campaign(conn, campaign_id)
            accepted, rejections = await _screen_and_store(conn, request, settings)
            response = {
                "campaign_id": str(campaign_id),
                "accepted": accepted,
                "rejected_count": len(rejections),
                "rejected": [
                    {"index": r.index, "email": r.email, "reason": r.reason} for r in rejections
                ],
            }
            if idempotency_key is not None:
                await queries.store_idempotent_response(
                    conn, principal, idempotency_key, ACCEPTED, response
                )
    except KeyTakenError:
        stored = await queries.fetch_idempotent_response(conn, principal, idempotency_key or "")
        return replay(stored, request_hash)
    return Enqueued(ACCEPTED, response, campaign_id, accepted)


def encode(response: dict[str, Any]) -> bytes:
    return json.dumps(response, ensure_ascii=False, separators=(",", ":")).encode()
