"""PostgreSQL connection pool set-up shared by the services."""

import json
from typing import Any, TypeAlias

import asyncpg

from mailfleet_common.settings import PostgresSettings

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


async def _init_connection(conn: Conn) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(settings: PostgresSettings, **overrides: Any) -> Pool:
    """Open a pool whose connections decode json/jsonb to Python values."""
    options: dict[str, Any] = {
        "min_size": settings.pool_min,
        "max_size": settings.pool_max,
        "init": _init_connection,
    }
    options.update(overrides)
    pool = await asyncpg.create_pool(settings.dsn, **options)
    assert pool is not None  # noqa: S101 - create_pool only returns None when awaited lazily
    return pool
