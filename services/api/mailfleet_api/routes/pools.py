"""Account pools: the tags accounts carry, their members and capacity, the campaigns using them."""

from typing import Annotated

from fastapi import APIRouter, Path

from mailfleet_api import queries, schemas
from mailfleet_api.deps import DbConn, Limit, Offset, Viewer
from mailfleet_api.errors import NotFoundError

router = APIRouter(prefix="/api/admin/pools", tags=["pools"])


@router.get("")
async def list_pools(
    conn: DbConn, _: Viewer, limit: Limit = 50, offset: Offset = 0
) -> schemas.Page[schemas.Pool]:
    """List the pools (every tag an account carries or a campaign names), by tag."""
    items, total = await queries.list_pools(conn, limit, offset)
    return schemas.Page(items=items, total=total, limit=limit, offset=offset)


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
    items, _total = await queries.list_pools(conn, 1, 0, tag)
    if not items:
        raise NotFoundError(f"no account carries {tag!r} and no campaign names it")
    return items[0]
