"""An account's pace between sends and its waits after failures, whatever its transport."""

import random
import time
from collections.abc import Sequence
from typing import Protocol


class Slot(Protocol):
    """One of an account's concurrent senders: an SMTP session, or a Gmail API caller."""

    def close(self) -> None: ...

    def retire(self) -> None: ...


class PacedTransport:
    """Books an account's send turns `gap_s` apart and holds it after failures.

    Turns are booked per account, across all its slots: concurrent slots of one account keep
    its pace together.
    """

    connections: Sequence[Slot]

    def __init__(self, max_connections: int, gap_s: float) -> None:
        self._max = max_connections
        self._gap = gap_s
        self._next_at = 0.0
        # Sessions that could not be opened in a row, and until when the account waits.
        self.unreachable = 0
        self.held_until = 0.0
        # Times in a row the provider asked the account to slow down (Gmail's quotas).
        self.throttled = 0

    @property
    def size(self) -> int:
        return self._max

    def reserve_turn(self) -> float:
        """Book the account's next send slot; returns how long to wait before sending."""
        if self._gap <= 0:
            return 0.0
        now = time.monotonic()
        at = max(now, self._next_at)
        self._next_at = at + self._gap
        return at - now

    def hold(self, base_s: float, cap_s: float, counted: bool = True) -> int:
        """Count one more session that could not be opened, and make the account wait.

        The wait doubles with each failure in a row, up to `cap_s`, with a jitter so that
        accounts of one unreachable provider do not all try again at the same moment. A
        failure that is not the account's (`counted` false) only makes it wait `base_s`.
        """
        self.unreachable += counted
        delay = min(cap_s, base_s * 2 ** max(self.unreachable - 1, 0)) if counted else base_s
        jitter = random.uniform(0.8, 1.2)  # noqa: S311 - spreading retries, not a secret
        self.held_until = time.monotonic() + delay * jitter
        return self.unreachable

    def throttle(self, at_least_s: float, base_s: float, cap_s: float) -> float:
        """The provider asked the account to slow down: wait, doubling while it keeps asking.

        The wait is at least `at_least_s` (what the provider named: a Retry-After, the end of
        its day) and the backoff; a jitter of up to a fifth of the backoff above it spreads
        the accounts that were refused together. Returns the wait in seconds.
        """
        self.throttled += 1
        backoff = min(cap_s, base_s * 2 ** (self.throttled - 1))
        jitter = random.uniform(0, 0.2 * backoff)  # noqa: S311 - spreading retries, not a secret
        delay: float = max(at_least_s, backoff) + jitter
        self.held_until = max(self.held_until, time.monotonic() + delay)
        return delay

    def reachable(self) -> None:
        self.unreachable = 0
        self.throttled = 0
        self.held_until = 0.0

    def close(self) -> None:
        for connection in self.connections:
            connection.retire()
