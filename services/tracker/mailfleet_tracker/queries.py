"""Every SQL statement the tracker runs. The caller owns the transaction."""

from dataclasses import dataclass
from typing import TypeAlias
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from mailfleet_common.db import Conn as Connection

# mailfleet_common.db.Conn names a bare connection; a pooled one is a proxy with the same API.
Conn: TypeAlias = "Connection | PoolConnectionProxy[asyncpg.Record]"


@dataclass(frozen=True)
class Recipient:
    """Who a message went to, and where an unsubscribe from it applies."""

    email: str
    campaign_id: UUID
    scope: str  # 'global' or 'campaign', the campaign's unsubscribe_scope

    @property
    def scope_campaign(self) -> UUID | None:
        """The campaign a suppression is limited to, or None for every campaign."""
        return self.campaign_id if self.scope == "campaign" else None


async def highest_message_id(conn: Conn) -> int:
    """The highest message id ever handed out (0 before the first), without scanning messages."""
    value = await conn.fetchval(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence('messages', 'id')::regclass)"
    )
    return int(value or 0)


async def message_recipient(conn: Conn, message_id: int) -> Recipient | None:
    """The message's address and its campaign's unsubscribe scope, or None if there is none."""
    row = await conn.fetchrow(
        """
        SELECT m.email, m.campaign_id, c.unsubscribe_scope
        FROM messages m JOIN campaigns c ON c.id = m.campaign_id
        WHERE m.id = $1
        """,
        message_id,
    )
    if row is None:
        return None
    return Recipient(row["email"], row["campaign_id"], row["unsubscribe_scope"])


async def suppress_address(
    conn: Conn, email: str, campaign_id: UUID | None, reason: str, source: str
) -> int:
    """Suppress the address (in one campaign, or all when None); returns messages cancelled."""
    cancelled = await conn.fetchval(
        "SELECT suppress_address($1, $2, $3, $4)", email, campaign_id, reason, source
    )
    return int(cancelled)


async def count_sending(conn: Conn, email: str, campaign_id: UUID | None) -> int:
    """Messages to the address (in one campaign, or any when None) a sender has claimed."""
    count = await conn.fetchval(
        """
        SELECT count(*) FROM messages
        WHERE lower(email) = lower($1) AND status = 'sending'
          AND ($2::uuid IS NULL OR campaign_id = $2)
        """,
        email,
        campaign_id,
    )
    return int(count)
