"""Keyset pages: placeholders appended to a statement's arguments, newest-first pages."""

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
    after: tuple[Any, ...] | None,
) -> tuple[list[asyncpg.Record], bool]:
    """A keyset page of `select` (a SELECT ... FROM) ordered by (`at`, id) descending.

    `where` and its `args` choose the rows; the page starts after the (`at`, id) position
    given. Returns the page and whether more follow.
    """
    return await keyset_page(conn, select, (at, "id"), where, args, limit, after)


async def oldest_first(
    conn: Conn,
    select: str,
    where: str,
    args: list[Any],
    limit: int,
    after: tuple[Any, ...] | None,
) -> tuple[list[asyncpg.Record], bool]:
    """A keyset page of `select` ordered by (created_at, id) ascending, after `after`."""
    keys = ("created_at", "id")
    return await keyset_page(conn, select, keys, where, args, limit, after, descending=False)


async def keyset_page(
    conn: Conn,
    select: str,
    keys: tuple[str, ...],
    where: str,
    args: list[Any],
    limit: int,
    after: tuple[Any, ...] | None,
    *,
    descending: bool = True,
) -> tuple[list[asyncpg.Record], bool]:
    """A keyset page of `select` ordered by the columns `keys` (unique together).

    `where` and its `args` choose the rows; the page starts after the position (one value per
    key) given. Returns the page and whether more follow.
    """
    columns = ", ".join(keys)
    where = f"({where})"
    if after is not None:
        values = ", ".join(param(args, value) for value in after)
        where += f" AND ({columns}) {'<' if descending else '>'} ({values})"
    order = ", ".join(f"{key} {'DESC' if descending else 'ASC'}" for key in keys)
    rows = await conn.fetch(
        f"{select} WHERE {where} ORDER BY {order} LIMIT {param(args, limit + 1)}", *args
    )
    return rows[:limit], len(rows) > limit
