"""Account pools: the tags accounts carry, their members and capacity, the campaigns using them."""

from typing import Annotated

from fastapi import APIRouter, Path

from mailfleet_api import pages, queries, schemas
from mailfleet_api.deps import Cursor, DbConn, Limit, Viewer
from mailfleet_api.errors import NotFoundError
from mailfleet_api.schemas.pools import PoolPage

router = APIRouter(prefix="/api/admin/pools", tags=["pools"])


@router.get("")
async def list_pools(conn: DbConn, _: Viewer, limit: Limit = 50, cursor: Cursor = None) -> PoolPage:
    """List the pools (every tag an account carries or a campaign names), by tag."""
    (after,) = pages.after(cursor, (str,)) or (None,)
    items, more = await queries.list_pools(conn, limit, after)
    return pages.cursor_page(PoolPage, items, more, limit, lambda p: (p.tag,))


@router.get("/{tag}")
async def get_pool(
    tag: Annotated[
        str,
        Path(
            min_length=1, max_length=63, pattern=schemas.TAG_PATTERN, description=schemas.TAG_RULE
        ),
    ],
    conn: DbConn,
    _: Viewer,
) -> schemas.Pool:
    """Show one pool: its accounts by status, today's capacity, its campaigns by status."""
    items, _more = await queries.list_pools(conn, 1, None, tag)
    if not items:
        raise NotFoundError(f"no account carries {tag!r} and no campaign names it")
    return items[0]
