"""Keyset pages, newest first: the opaque cursor that continues after a (timestamp, id)."""

import base64
from datetime import UTC, datetime

from mailfleet_api.errors import InvalidError

_MAX_ID = 2**63 - 1


def encode_cursor(at: datetime, last_id: int) -> str:
    """An opaque cursor for the page after the item with this timestamp and id."""
    raw = f"{at.isoformat()}|{last_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The (timestamp, id) a cursor continues after; InvalidError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, _, last_id = raw.decode().partition("|")
        position = datetime.fromisoformat(at), int(last_id)
        # In UTC, as PostgreSQL will compare it: 0001-01-01T00:00+14:00 is before year 1.
        position[0].astimezone(UTC)
    except (ValueError, OverflowError):  # bad base64, UTF-8, timestamp or number alike
        position = None
    if position is None or position[0].tzinfo is None or not 1 <= position[1] <= _MAX_ID:
        raise InvalidError("invalid cursor: pass the next_cursor of the previous page as it is")
    return position
