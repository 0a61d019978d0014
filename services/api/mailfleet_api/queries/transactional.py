"""SQL of transactional sends: streams, and messages with their content and attachments."""

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from mailfleet_common.db import Conn


@dataclass(frozen=True, slots=True)
class Stream:
    id: UUID
    status: str


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A screened transactional message, as it is stored."""

    email: str
    name: str | None
    variables_json: str
    subject: str
    html_body: str | None
    text_body: str | None
    # (filename, content type, content)
    attachments: Sequence[tuple[str, str, bytes]]


async def stream_for(
    conn: Conn, owner_id: UUID, account_ids: Sequence[UUID], pool_tags: Sequence[str]
) -> Stream:
    """The owner's transactional stream through these accounts or tags, created on first use.

    A stream is a campaign of kind 'transactional', running from the start and never
    completed, without tracking (a PATCH of the campaign turns it on).
    """
    key = "accounts:" + ",".join(sorted(map(str, account_ids))) + "|tags:" + ",".join(pool_tags)
    await conn.execute(
        """
        INSERT INTO campaigns (owner_id, name, subject, text_body, account_ids, pool_tags,
                               status, tracking, kind, stream_key)
        VALUES ($1, 'transactional ' || $2, '', '', $3, $4, 'running', false, 'transactional',
                $2)
        ON CONFLICT (owner_id, stream_key) WHERE kind = 'transactional' DO NOTHING
        """,
        owner_id,
        key,
        list(account_ids),
        list(pool_tags),
    )
    row = await conn.fetchrow(
        """
        SELECT id, status FROM campaigns
        WHERE owner_id = $1 AND stream_key = $2 AND kind = 'transactional'
        FOR SHARE
        """,
        owner_id,
        key,
    )
    assert row is not None  # noqa: S101 - inserted or found above, never deleted
    return Stream(row["id"], row["status"])


async def is_transactional(conn: Conn, campaign_id: UUID) -> bool:
    """Whether the campaign is a transactional stream (its messages come through /messages)."""
    kind: str | None = await conn.fetchval("SELECT kind FROM campaigns WHERE id = $1", campaign_id)
    return kind == "transactional"


async def insert_messages(
    conn: Conn,
    stream_id: UUID,
    messages: Sequence[NewMessage],
    reply_to: str | None,
    traceparent: str | None,
) -> list[int]:
    """Queue the messages in order with their content and files; returns their ids."""
    ids: list[int] = [
        r["id"]
        for r in await conn.fetch(
            """
            INSERT INTO messages (campaign_id, email, name, variables, traceparent, transactional)
            SELECT $1, r.email, r.name, r.variables::jsonb, $5, true
            FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY
                 AS r (email, name, variables, position)
            ORDER BY r.position
            RETURNING id
            """,
            stream_id,
            [m.email for m in messages],
            [m.name for m in messages],
            [m.variables_json for m in messages],
            traceparent,
        )
    ]
    ids.sort()  # identity values follow the insertion order
    # As at enqueue (queries/queue.py): a `queued` event only while an endpoint wants it.
    await conn.execute(
        """
        INSERT INTO events (occurred_at, type, campaign_id, message_id)
        SELECT now(), 'queued', $1, id FROM unnest($2::bigint[]) AS id
        WHERE EXISTS (
            SELECT 1 FROM webhook_endpoints
            WHERE enabled AND 'message.queued' = ANY (event_types))
        """,
        stream_id,
        ids,
    )
    await conn.execute(
        """
        INSERT INTO message_contents (message_id, subject, html_body, text_body, reply_to)
        SELECT c.*, $5 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS c
        """,
        ids,
        [m.subject for m in messages],
        [m.html_body for m in messages],
        [m.text_body for m in messages],
        reply_to,
    )
    files = [
        (message_id, position, *attachment)
        for message_id, message in zip(ids, messages, strict=True)
        for position, attachment in enumerate(message.attachments)
    ]
    if files:
        await conn.copy_records_to_table(
            "message_attachments",
            records=files,
            columns=["message_id", "position", "filename", "content_type", "content"],
        )
    return ids
