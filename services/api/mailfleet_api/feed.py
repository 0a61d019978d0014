"""The live events feed's position: how far it has read, and the gap it is waiting on.

Event ids are allocated when a row is inserted, not when its transaction commits: id 11 may
become visible before id 10, whose transaction is still running. A reader that simply went on
after 11 would never see 10. So the feed serves ids only up to the first gap, and goes past a
gap only once it is known to be permanent: every transaction that was running when the gap was
first seen has ended (committed or rolled back), and at least `GAP_GRACE_MS` has passed (an id
is drawn a moment before its transaction takes a transaction id, so the snapshot alone could
miss it). Gaps are normal and stay forever: a rolled-back insert, or a duplicate dropped by
ON CONFLICT DO NOTHING, uses up its id. Waiting on one costs the reader that grace, never an
event.
"""

import base64
import json
from dataclasses import dataclass

from mailfleet_api.errors import InvalidError

GAP_GRACE_MS = 1000
# Past this many transactions running at once, the position keeps only the snapshot's xmax
# (the gap is permanent once every transaction older than it has ended), to stay short.
MAX_TRACKED_XIDS = 32
_MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Snapshot:
    """pg_current_snapshot(): transactions below xmin ended, xip were running, xmax next."""

    xmin: int
    xmax: int
    xip: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> "Snapshot":
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x))

    def without(self, xids: set[int]) -> "Snapshot":
        """The snapshot leaving out these running transactions (32-bit xids, as in pg_stat)."""
        return Snapshot(self.xmin, self.xmax, tuple(x for x in self.xip if x % 2**32 not in xids))

    def ended(self, xid: int) -> bool:
        """Whether this transaction had ended (committed or aborted) when the snapshot was taken."""
        return xid < self.xmax and xid not in self.xip


@dataclass(frozen=True)
class Gap:
    """Missing ids [start, end) first seen at `seen_ms` (database clock) under a snapshot."""

    start: int
    end: int
    seen_ms: int
    xmax: int
    xids: tuple[int, ...] | None  # None: more were running than are tracked

    def permanent(self, now: Snapshot, now_ms: int) -> bool:
        if now_ms - self.seen_ms < GAP_GRACE_MS:
            return False
        if self.xids is None:
            return now.xmin >= self.xmax
        return all(now.ended(xid) for xid in self.xids)


@dataclass(frozen=True)
class Position:
    """The feed has served every event up to `after`; `gap` is the one it waits on, if any."""

    after: int
    gap: Gap | None = None

    def encode(self) -> str:
        fields: list[object] = [self.after]
        if self.gap is not None:
            g = self.gap
            fields += [g.start, g.end, g.seen_ms, g.xmax, None if g.xids is None else list(g.xids)]
        raw = json.dumps(fields, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> "Position":
        try:
            fields = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            after = _bigint(fields[0])
            gap = None
            if len(fields) > 1:
                start, end, seen_ms, xmax, xids = fields[1:]
                tracked = None if xids is None else tuple(_bigint(x) for x in xids)
                gap = Gap(_bigint(start), _bigint(end), _bigint(seen_ms), _bigint(xmax), tracked)
                if not after < gap.start < gap.end:
                    raise ValueError("gap out of order")
        except (ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError) as exc:
            raise InvalidError(
                "invalid cursor: pass the next_cursor of the previous answer as it is"
            ) from exc
        return cls(after, gap)


def _bigint(value: object) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_ID:
        raise ValueError("not an id")
    return value


def safe_end(position: Position, ids: list[int], now: Snapshot, now_ms: int) -> Position:
    """How far the feed may serve, given the ids after `position.after` visible now, in order.

    Returns the position after the last id that no late commit can precede, with the gap it
    stopped at (kept from `position` while it is the same gap, so its grace runs on).
    """
    reached = position.after
    for found in ids:
        expected = reached + 1
        if found == expected:
            reached = found
            continue
        known = position.gap
        if known is not None and known.start <= expected < known.end:
            if known.permanent(now, now_ms):
                reached = found
                continue
            return Position(
                reached, Gap(expected, known.end, known.seen_ms, known.xmax, known.xids)
            )
        xids = now.xip if len(now.xip) <= MAX_TRACKED_XIDS else None
        return Position(reached, Gap(expected, found, now_ms, now.xmax, xids))
    return Position(reached)
