"""Keyset pages: the opaque cursor that continues after a position, and the page it ends.

A position is the sort key of a list's last item: (timestamp, id) for most lists, the
name for lists ordered by name. Every list of the API is read this way (no offsets), so a
page is as fast at the millionth row as at the first and never skips or repeats an item
when rows are added meanwhile.
"""

import base64
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from mailfleet_api.errors import InvalidError
from mailfleet_api.schemas.common import CursorPage

T = TypeVar("T")
P = TypeVar("P", bound=CursorPage[Any])
Key = datetime | int | UUID | str
Position = tuple[Any, ...]

_MAX_ID = 2**63 - 1
_MAX_KEY_CHARS = 200
# (timestamp, bigint id): the lists of suppressions, reports and uncertain messages.
BY_TIME_AND_ID: tuple[type, ...] = (datetime, int)
# (created_at, uuid id): users, API keys, accounts, campaigns.
BY_CREATION: tuple[type, ...] = (datetime, UUID)


def encode_cursor(*position: Key) -> str:
    """An opaque cursor for the page after the item at this position."""
    parts = (p.isoformat() if isinstance(p, datetime) else str(p) for p in position)
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def _decoded(kind: type, text: str) -> Key:
    if kind is datetime:
        at = datetime.fromisoformat(text)
        # In UTC, as PostgreSQL will compare it: 0001-01-01T00:00+14:00 is before year 1.
        if at.tzinfo is None or at.astimezone(UTC) is None:
            raise ValueError("no offset")
        return at
    if kind is int:
        number = int(text)
        if not 1 <= number <= _MAX_ID:
            raise ValueError("out of range")
        return number
    if kind is UUID:
        return UUID(text)
    if not text or len(text) > _MAX_KEY_CHARS:
        raise ValueError("empty or too long")
    return text


def decode_cursor(cursor: str, kinds: Sequence[type] = BY_TIME_AND_ID) -> Position:
    """The position a cursor continues after; InvalidError if it is not one of this list.

    ``kinds`` are the types of its parts: datetime, int, UUID or str.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        parts = raw.split("|", len(kinds) - 1)
        if len(parts) != len(kinds):
            raise ValueError("wrong number of parts")
        return tuple(_decoded(kind, part) for kind, part in zip(kinds, parts, strict=True))
    except (ValueError, OverflowError):  # bad base64, UTF-8, timestamp or number alike
        raise InvalidError(
            "invalid cursor: pass the next_cursor of the previous page as it is"
        ) from None


def after(cursor: str | None, kinds: Sequence[type] = BY_TIME_AND_ID) -> Position | None:
    """The position a request's ``cursor`` parameter continues after; None for the first page."""
    return None if cursor is None else decode_cursor(cursor, kinds)


def cursor_page(
    page: type[P],
    items: Sequence[T],
    more: bool,
    limit: int,
    position: Callable[[T], tuple[Key, ...]],
) -> P:
    """The page of these items, with a cursor after the last one's position if more follow."""
    next_cursor = encode_cursor(*position(items[-1])) if more and items else None
    return page(items=items, limit=limit, next_cursor=next_cursor)
