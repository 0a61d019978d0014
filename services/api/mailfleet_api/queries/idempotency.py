"""SQL of idempotency keys: claim, stored response."""

from typing import Any

import asyncpg
from mailfleet_common.db import Conn


async def claim_idempotency_key(conn: Conn, principal: str, key: str, request_hash: bytes) -> bool:
    """Reserve a key for this request; False if another request holds it already.

    A concurrent request with the same key waits here until the first one commits.
    """
    claimed = await conn.fetchval(
        """
        INSERT INTO idempotency_keys (principal, key, request_hash, status_code, response)
        VALUES ($1, $2, $3, 0, '{}')
        ON CONFLICT (principal, key) DO NOTHING
        RETURNING true
        """,
        principal,
        key,
        request_hash,
    )
    return bool(claimed)


async def fetch_idempotent_response(conn: Conn, principal: str, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        SELECT request_hash, status_code, response FROM idempotency_keys
        WHERE principal = $1 AND key = $2
        """,
        principal,
        key,
    )


async def store_idempotent_response(
    conn: Conn, principal: str, key: str, status_code: int, response: dict[str, Any]
) -> None:
    await conn.execute(
        """
        UPDATE idempotency_keys SET status_code = $3, response = $4
        WHERE principal = $1 AND key = $2
        """,
        principal,
        key,
        status_code,
        response,
    )
