"""PostgreSQL connection pool set-up shared by the services."""

import json
from typing import Any, TypeAlias

import asyncpg

from mailfleet_common.settings import PostgresSettings

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


async def _init_connection(conn: Conn) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: Conn) -> None:
    """Release a connection without asyncpg's reset query.

    The default reset (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) costs a
    round trip and server work on every release, which the hot paths do hundreds of times a
    second. mailfleet leaves no session state behind (its locks are transaction-scoped), and
    the pool still rolls back an open transaction and drops listeners before calling this.
    """


async def create_pool(settings: PostgresSettings, **overrides: Any) -> Pool:
    """Open a pool whose connections decode json/jsonb to Python values."""
    options: dict[str, Any] = {
        "min_size": settings.pool_min,
        "max_size": settings.pool_max,
        "init": _init_connection,
        "reset": _keep_session,
    }
    options.update(overrides)
    pool = await asyncpg.create_pool(settings.dsn, **options)
    assert pool is not None  # noqa: S101 - create_pool only returns None when awaited lazily
    return pool
