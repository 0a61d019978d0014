"""The highest message id ever issued, held in memory and read again every second or so."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class IssuedIds:
    """Turns away verified tokens that name a message id no message ever had.

    Only our keys can sign a token, so a verified token names a message some sender built,
    unless the database it was built against is gone (reset, or restored from an older
    backup). A token whose id is above the highest id the messages sequence ever handed out
    cannot name a message, and comparing with one number in memory finds that without a
    lookup per request. Above the cached number the sequence is read again first (one read
    shared by every request waiting for it); if the database cannot answer, the signature is
    trusted: losing a real reader's open is worse than recording one for a missing message.
    """

    def __init__(
        self,
        fetch_highest: Callable[[], Awaitable[int]],
        refresh_s: float = 1.0,
        timeout_s: float = 0.5,
    ) -> None:
        self.highest = 0
        self.read_at: float | None = None  # time.monotonic() of the last read that worked
        self._fetch_highest = fetch_highest
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._reading: asyncio.Task[int | None] | None = None
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    async def covers(self, message_id: int) -> bool:
        """Whether a message with this id can exist: at most the highest id issued."""
        if message_id <= self.highest:
            return True
        reading = self._reading
        if reading is None or reading.done():
            reading = self._reading = asyncio.create_task(self.refresh())
        # Shielded: a client that goes away must not cancel the read others are waiting for.
        highest = await asyncio.shield(reading)
        return highest is None or message_id <= highest

    async def refresh(self) -> int | None:
        """Read the highest id now; None (and the old value kept) if the database is away."""
        try:
            async with asyncio.timeout(self._timeout_s):
                highest = await self._fetch_highest()
        except Exception as exc:
            self.read_at = None
            if not self._failing:
                log.warning(
                    "cannot read the highest message id, trusting token signatures",
                    extra={"error": repr(exc)},
                )
                self._failing = True
            return None
        if self._failing:
            log.info("reading the highest message id again", extra={"highest": highest})
            self._failing = False
        # It may go down: a database reset restarts the sequence, and its old ids are gone.
        self.highest = highest
        self.read_at = time.monotonic()
        return highest

    def read_within(self, seconds: float) -> bool:
        """Whether the last read worked, and was no longer ago than `seconds`."""
        return self.read_at is not None and time.monotonic() - self.read_at <= seconds

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="issued-ids")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()
