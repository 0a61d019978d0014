"""Pausing an account and giving its messages back to the queue, for whoever finds it unusable."""

from datetime import datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg
import asyncpg.pool

# A plain connection or one borrowed from a pool: the caller owns the transaction.
Conn: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)


async def requeue_and_pause_account(
    conn: Conn,
    account_id: UUID,
    reason: str,
    source: str,
    message_id: int | None = None,
    code: int | None = None,
) -> datetime | None:
    """Pause an account that cannot send, and give its messages back to the queue.

    The message in hand, if any (`sending`, nothing was sent for it), loses the attempt its
    claim counted and keeps `code` and `reason` as its last error; it and every other message
    still assigned to the account go back to `queued` and give their units of capacity back to
    the day they were assigned on. The account is updated first: the dispatcher's assignment
    locks the account row, so once the pause holds, no new assignment can appear that the
    second statement would not see. The pause's 'account-paused' event is written with it (the
    dispatcher, receiving the AccountPaused of the same instant, records nothing more); the
    caller publishes that AccountPaused. Returns when this call paused the account, or None if
    it was no longer active.
    """
    async with conn.transaction():
        paused_at: datetime | None = await conn.fetchval(
            "SELECT pause_account($1, $2, $3)", account_id, reason, source
        )
        await conn.execute(
            """
            WITH msg AS (
                UPDATE messages
                SET status = 'queued', account_id = NULL, assigned_at = NULL,
                    sender_replica = NULL,
                    attempts = CASE WHEN id = $1 THEN attempts - 1 ELSE attempts END,
                    last_code = CASE WHEN id = $1 THEN $3 ELSE last_code END,
                    last_error = CASE WHEN id = $1 THEN $4 ELSE last_error END,
                    updated_at = now()
                FROM (SELECT id AS held_id, assigned_at AS held_at FROM messages
                      WHERE (id = $1::bigint AND status = 'sending')
                         OR (account_id = $2 AND status = 'assigned')
                      FOR NO KEY UPDATE) AS held
                WHERE messages.id = held.held_id
                RETURNING held.held_at
            )
            SELECT release_reservations(
                array_agg($2::uuid), array_agg((held_at AT TIME ZONE 'UTC')::date),
                array_agg(1)
            )
            FROM msg
            """,
            message_id,
            account_id,
            code,
            reason,
        )
    return paused_at
