"""Reading a Gmail-API account's mailbox: in full at first, then by its history, each message once.

A full read lists the inbox, sets aside the messages listed under the processed label (by
label id: no search query, whose label names would need quoting), reads each
(format=raw) through the same classifier and actions as IMAP, labels it, and stores the
history id taken before listing. Later reads ask users.history.list for the messages added to
the inbox since that id; when Gmail no longer has it (404), a full read again.

Each message is acted on once: its Gmail id is kept with its report (unique per account), so a
message read again (a crash after acting and before labelling, a full read after 404) is only
labelled, never fetched or acted on a second time. The label is for people and for listing
less; the reports are what decides.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from mailfleet_common.db import Pool

from mailfleet_bouncer import queries
from mailfleet_bouncer.gmail import GmailError, GmailMailbox
from mailfleet_bouncer.imap import Fetched
from mailfleet_bouncer.queries import MailboxAccount
from mailfleet_bouncer.reports import Folder
from mailfleet_bouncer.settings import BouncerSettings

log = logging.getLogger(__name__)

INBOX = "INBOX"
_KNOWN_CHUNK = 1000


class Progress(Protocol):
    processed: int


ProcessGroup = Callable[[MailboxAccount, Folder, list[Fetched], Any], Awaitable[None]]


class GmailReader:
    """Reads one Gmail mailbox per call; the processing itself is the replica's."""

    def __init__(
        self,
        pool: Pool,
        config: BouncerSettings,
        process_group: ProcessGroup,
        processed: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._config = config
        self._process_group = process_group
        self._processed = processed

    async def read(
        self,
        account: MailboxAccount,
        mailbox: GmailMailbox,
        stopping: asyncio.Event,
        progress: Progress,
    ) -> None:
        async with self._pool.acquire() as conn:
            state = await queries.gmail_state(conn, account.id)
        if state.backoff_until is not None and state.backoff_until > datetime.now(UTC):
            return  # Gmail asked this mailbox to wait
        label = await mailbox.label_id(self._config.gmail_processed_label)
        if state.processed_label_id != label:
            async with self._pool.acquire() as conn:
                await queries.save_gmail_label(conn, account.id, label)
        if state.history_id is not None:
            try:
                added, newest = await mailbox.added_since(state.history_id, INBOX)
            except GmailError as exc:
                if exc.status != 404:
                    raise
                log.warning(
                    "Gmail history expired: reading the whole inbox again",
                    extra={"account_id": str(account.id), "history_id": state.history_id},
                )
                async with self._pool.acquire() as conn:
                    await queries.forget_gmail_history(conn, account.id)
            else:
                ids = [
                    str(m["id"])
                    for m in added
                    if INBOX in m.get("labelIds", [INBOX]) and label not in m.get("labelIds", [])
                ]
                if await self._take(
                    account, mailbox, label, list(dict.fromkeys(ids)), stopping, progress
                ):
                    async with self._pool.acquire() as conn:
                        await queries.gmail_synced(conn, account.id, newest, full=False)
                return
        await self._read_all(account, mailbox, label, stopping, progress)

    async def _read_all(
        self,
        account: MailboxAccount,
        mailbox: GmailMailbox,
        label: str,
        stopping: asyncio.Event,
        progress: Progress,
    ) -> None:
        # The history id first: whatever arrives while the inbox is listed is in its history.
        history_id = await mailbox.history_id()
        done = set(await mailbox.message_ids([label]))
        # Listed newest first; read oldest first, as they arrived.
        todo = [i for i in reversed(await mailbox.message_ids([INBOX])) if i not in done]
        if await self._take(account, mailbox, label, todo, stopping, progress):
            async with self._pool.acquire() as conn:
                await queries.gmail_synced(conn, account.id, history_id, full=True)

    async def _take(
        self,
        account: MailboxAccount,
        mailbox: GmailMailbox,
        label: str,
        ids: list[str],
        stopping: asyncio.Event,
        progress: Progress,
    ) -> bool:
        """Process and label these messages in order; whether all were (not stopped midway)."""
        known: set[str] = set()
        async with self._pool.acquire() as conn:
            for start in range(0, len(ids), _KNOWN_CHUNK):
                chunk = ids[start : start + _KNOWN_CHUNK]
                known |= await queries.known_provider_ids(conn, account.id, chunk)
        folder = Folder(account.id, INBOX, 0)
        limit = self._config.max_message_bytes
        group: list[Fetched] = []
        used = 0
        for message_id in ids:
            if stopping.is_set():
                break
            if message_id in known:
                # Acted on before, not labelled: a crash came in between.
                await self._label(mailbox, message_id, label)
                continue
            try:
                fetched = await mailbox.message(message_id, limit)
            except GmailError as exc:
                if exc.status != 404:
                    raise
                continue  # deleted since it was listed
            group.append(fetched)
            used += len(fetched.raw)
            if len(group) >= self._config.fetch_batch or used >= 2 * limit:
                await self._finish(account, mailbox, label, folder, group, progress)
                group, used = [], 0
        if group:
            await self._finish(account, mailbox, label, folder, group, progress)
        return not stopping.is_set()

    async def _finish(
        self,
        account: MailboxAccount,
        mailbox: GmailMailbox,
        label: str,
        folder: Folder,
        group: list[Fetched],
        progress: Progress,
    ) -> None:
        # Acted on and committed first, labelled after: a crash in between is caught above.
        await self._process_group(account, folder, group, progress)
        self._processed()
        for fetched in group:
            await self._label(mailbox, fetched.provider_id or "", label)

    async def _label(self, mailbox: GmailMailbox, message_id: str, label: str) -> None:
        try:
            await mailbox.add_label(message_id, label)
        except GmailError as exc:
            if exc.status != 404:
                raise
