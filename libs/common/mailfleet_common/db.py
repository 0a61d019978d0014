"""PostgreSQL connection pool set-up shared by the services."""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import asyncpg

from mailfleet_common.settings import PostgresSettings

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"

T = TypeVar("T")

# Held (pg_advisory_xact_lock) by whoever creates or drops partitions of `events`: the
# dispatcher's monthly upkeep and `mailfleet retention`. Any constant works, as long as all
# of them use this one.
EVENTS_PARTITION_LOCK = 0x6D66_6470_6172_7473  # "mfdparts"

log = logging.getLogger(__name__)

# What PostgreSQL restarting, failing over or refusing connections looks like to a client:
# the statement did not run, or ran in a transaction that rolled back. A restart terminates
# sessions with AdminShutdownError and refuses new ones with CannotConnectNowError while it
# starts, both OperatorInterventionError rather than connection errors. A connection cut in
# the middle of a statement can also be left in a state its next use refuses with
# InternalClientError ("cannot switch to state 12; another operation is in progress").
DATABASE_AWAY: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)

_RETRY_FIRST_S = 0.05
_RETRY_CAP_S = 0.5


async def while_database_away(
    operation: Callable[[], Awaitable[T]],
    what: str,
    give_up_after_s: Callable[[], float | None] = lambda: None,
) -> T:
    """Run `operation` until it completes, retrying while the database is away.

    The delay between tries doubles from 50 ms up to 0.5 s, so work resumes within half a
    second of the database coming back. `give_up_after_s` is asked after each failure: a
    number of seconds since the first failure after which to raise (None: keep trying), for
    callers that must stop some day, such as a service shutting down. Only safe for
    operations that may run twice: each retry is a new transaction.
    """
    failed_at: float | None = None
    delay = _RETRY_FIRST_S
    while True:
        try:
            result = await operation()
        except DATABASE_AWAY as exc:
            now = time.monotonic()
            if failed_at is None:
                failed_at = now
                log.warning(
                    "database unavailable, retrying", extra={"what": what, "error": repr(exc)}
                )
            limit = give_up_after_s()
            if limit is not None and now - failed_at >= limit:
                raise
            await asyncio.sleep(delay)
            delay = min(_RETRY_CAP_S, delay * 2)
            continue
        if failed_at is not None:
            log.info(
                "database back",
                extra={"what": what, "away_s": round(time.monotonic() - failed_at, 3)},
            )
        return result


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
