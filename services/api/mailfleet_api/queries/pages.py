"""Keyset pages: placeholders appended to a statement's arguments, newest-first pages."""

from datetime import datetime
from typing import Any

import asyncpg
from mailfleet_common.db import Conn


def param(args: list[Any], value: Any) -> str:
    """The placeholder of `value`, appended to a statement's `args`."""
    args.append(value)
    return f"${len(args)}"


async def newest_first(
    conn: Conn,
    select: str,
    at: str,
    where: str,
    args: list[Any],
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[asyncpg.Record], bool]:
    """A keyset page of `select` (a SELECT ... FROM) ordered by (`at`, id) descending.

    `where` and its `args` choose the rows; the page starts after the (`at`, id) position
    given. Returns the page and whether more follow.
    """
    if after is not None:
        where += f" AND ({at}, id) < ({param(args, after[0])}, {param(args, after[1])})"
    rows = await conn.fetch(
        f"{select} WHERE {where} ORDER BY {at} DESC, id DESC LIMIT {param(args, limit + 1)}",
        *args,
    )
    return rows[:limit], len(rows) > limit
