"""One bouncer replica: which mailboxes it reads, reading them, and publishing what it found.

Ownership: every replica holds a shared PostgreSQL advisory lock for as long as its own lock
connection lives, so counting the holders counts the live replicas. A mailbox is read only by
the replica holding its exclusive advisory lock on that connection; each replica takes up to
its share (accounts / replicas, rounded up), preferring accounts by rendezvous hashing so that
replicas tend to want different ones, and gives back what it holds beyond its share. A replica
that dies loses its connection, and with it its locks, and the others take its mailboxes on
their next rebalance. Were two replicas ever to read one mailbox at once (a lock connection
lost while its reader is mid-message), each message is still acted on once: the report's
digest is unique per account and commits with the checkpoint.
"""

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from uuid import UUID

import aioimaplib
import asyncpg
import httpx
from mailfleet_common.crypto import SecretBox, SecretBoxError
from mailfleet_common.db import Conn as Connection
from mailfleet_common.db import Pool, create_pool
from mailfleet_common.messages import AccountPaused, Feedback
from mailfleet_common.oauth import (
    AccessTokens,
    ConsentNeededError,
    OAuthTokenError,
    pause_for_consent,
)
from mailfleet_common.topology import ACCOUNT_PAUSED_KEY, FEEDBACK_KEYS
from mailfleet_common.tracking import TokenSigner, parse_keys
from pydantic import BaseModel

from mailfleet_bouncer import metrics, queries
from mailfleet_bouncer.gmail import GmailError, GmailMailbox, Quota, RateLimitedError
from mailfleet_bouncer.gmail_reading import GmailReader
from mailfleet_bouncer.imap import Fetched, ImapError, Mailbox
from mailfleet_bouncer.imap import TokenRefusedError as ImapTokenRefusedError
from mailfleet_bouncer.queries import MailboxAccount
from mailfleet_bouncer.reports import Folder, ReportProcessor, feedback_from_details
from mailfleet_bouncer.settings import Settings

log = logging.getLogger(__name__)

_OUTBOX_BATCH = 200
_OUTBOX_IDLE_S = 5.0


class Publisher(Protocol):
    async def publish_event(self, event: BaseModel, routing_key: str) -> None: ...


def _weight(account_id: UUID, replica_id: str) -> int:
    digest = hashlib.blake2b(account_id.bytes + replica_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass
class _Progress:
    processed: int = 0


@dataclass(frozen=True, slots=True)
class _AccountTokens:
    """One account's OAuth2 access tokens, each call on a pooled connection."""

    pool: Pool
    tokens: AccessTokens
    account_id: UUID

    async def token(self) -> str:
        async with self.pool.acquire() as conn:
            return await self.tokens.access_token(conn, self.account_id)

    async def forget(self, token: str) -> None:
        async with self.pool.acquire() as conn:
            await self.tokens.forget(conn, self.account_id, token)


@dataclass
class _Reader:
    task: asyncio.Task[None]
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


class BouncerReplica:
    """Reads the mailboxes it owns, acts on what it finds, and publishes the outcomes."""

    def __init__(self, settings: Settings, ssl_context: ssl.SSLContext | None = None) -> None:
        self._settings = settings
        self._config = settings.bouncer
        self.replica_id = secrets.token_hex(8)
        self._box = SecretBox.from_settings(settings.crypto)
        signer = TokenSigner(parse_keys(settings.tracking.keys.get_secret_value()))
        self._processor = ReportProcessor(settings.bouncer, signer)
        self._tokens = AccessTokens(settings.oauth, self._box)
        self._quotas: dict[UUID, Quota] = {}
        self._ssl_context = ssl_context or self._default_context()
        self._pool: Pool | None = None
        self._http: httpx.AsyncClient | None = None
        self._lock_conn: Connection | None = None
        self._readers: dict[UUID, _Reader] = {}
        self._publisher: Publisher | None = None
        self._stopping = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _default_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self._config.imap_ca_file:
            context.load_verify_locations(self._config.imap_ca_file)
        return context

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the bouncer replica is not started")
        return self._pool

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("the bouncer replica is not started")
        return self._http

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("the bouncer replica is not started")
        return self._publisher

    @property
    def owned(self) -> frozenset[UUID]:
        return frozenset(self._readers)

    async def open(self, publisher: Publisher) -> None:
        """Connect to the database; nothing is read until `start` (or `poll`)."""
        self._publisher = publisher
        self._pool = await create_pool(self._settings.postgres)
        self._http = httpx.AsyncClient(timeout=self._settings.gmail.timeout_s)

    async def start(self, publisher: Publisher) -> None:
        """Open, then take a share of the mailboxes and read them until `stop`."""
        await self.open(publisher)
        self._tasks = [
            asyncio.create_task(self._rebalance_loop(), name="bouncer-rebalance"),
            asyncio.create_task(self._outbox_loop(), name="bouncer-outbox"),
        ]

    async def stop(self) -> None:
        """Stop reading (each reader finishes the message it is on), then release everything."""
        self._stopping.set()
        self._outbox_wake.set()
        await self._drop_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_lock_conn()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def is_ready(self) -> bool:
        return self._lock_conn is not None and not self._lock_conn.is_closed()

    # -- Ownership -------------------------------------------------------------------------

    async def _rebalance_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.rebalance()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Without the lock connection this replica holds no mailbox: stop reading all.
                log.warning("mailbox ownership lost: %s", exc)
                metrics.MAILBOX_ERRORS.labels("ownership").inc()
                await self._drop_all()
                await self._close_lock_conn()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._config.rebalance_s)

    async def rebalance(self) -> None:
        """Take this replica's share of the mailboxes, and give back what is beyond it."""
        conn = await self._ensure_lock_conn()
        async with self.pool.acquire() as pooled:
            accounts = await queries.mailbox_accounts(pooled)
        listed = {account.id for account in accounts}
        for account_id in [a for a in self._readers if a not in listed]:
            await self._drop(account_id)
        replicas = await queries.live_replicas(conn)
        share = math.ceil(len(accounts) / replicas) if accounts else 0
        preference = sorted(listed, key=lambda a: _weight(a, self.replica_id), reverse=True)
        while len(self._readers) > share:
            least = min(self._readers, key=lambda a: _weight(a, self.replica_id))
            await self._drop(least)
        for account_id in preference:
            if len(self._readers) >= share or self._stopping.is_set():
                break
            if account_id in self._readers:
                continue
            if await queries.try_own(conn, account_id):
                self._start_reader(account_id)
        metrics.MAILBOXES_OWNED.set(len(self._readers))

    async def _ensure_lock_conn(self) -> Connection:
        if self._lock_conn is None or self._lock_conn.is_closed():
            self._lock_conn = await asyncpg.connect(self._settings.postgres.dsn)
            await queries.join(self._lock_conn)
        return self._lock_conn

    async def _close_lock_conn(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
            conn.terminate()

    def _start_reader(self, account_id: UUID) -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(self._read_loop(account_id, stopping), name=f"read-{account_id}")
        self._readers[account_id] = _Reader(task, stopping)
        log.info("reading mailbox", extra={"account_id": str(account_id)})

    async def _drop(self, account_id: UUID) -> None:
        reader = self._readers.pop(account_id, None)
        self._quotas.pop(account_id, None)
        if reader is None:
            return
        reader.stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(reader.task), self._config.imap_timeout_s)
        except TimeoutError:
            reader.task.cancel()
            await asyncio.gather(reader.task, return_exceptions=True)
        conn = self._lock_conn
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await queries.disown(conn, account_id)
        log.info("stopped reading mailbox", extra={"account_id": str(account_id)})

    async def _drop_all(self) -> None:
        await asyncio.gather(*(self._drop(a) for a in list(self._readers)))
        metrics.MAILBOXES_OWNED.set(0)

    # -- Reading ---------------------------------------------------------------------------

    async def _read_loop(self, account_id: UUID, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.poll(account_id, stopping)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._config.poll_s)

    async def poll(self, account_id: UUID, stopping: asyncio.Event | None = None) -> int:
        """Read the mailbox's new messages once; how many were processed. Never raises."""
        stopping = stopping or asyncio.Event()
        started = time.perf_counter()
        progress = _Progress()
        stage = "database"
        gmail_api = False
        try:
            async with self.pool.acquire() as conn:
                account = await queries.mailbox_account(conn, account_id)
            if account is None:
                return 0
            gmail_api = account.via_gmail_api
            tokens = _AccountTokens(self.pool, self._tokens, account.id)
            if gmail_api:
                stage = "gmail"
                mailbox_api = GmailMailbox(
                    self.http,
                    self._settings.gmail.api_url,
                    tokens,
                    self._quotas.setdefault(account.id, Quota(self._config.gmail_quota_per_minute)),
                    self._config.gmail_backoff_s,
                )
                reader = GmailReader(
                    self.pool, self._config, self.process_group, self._outbox_wake.set
                )
                await reader.read(account, mailbox_api, stopping, progress)
            else:
                stage = "credentials"
                password = None
                if account.password_enc is not None:
                    password = self._box.decrypt(account.password_enc)
                stage = "connect"
                mailbox = await self._connect(account, password, tokens)
                try:
                    stage = "read"
                    await self._read(account, mailbox, stopping, progress)
                finally:
                    await mailbox.close()
        except ConsentNeededError as exc:
            await self._consent_needed(exc)
            await self._failed(account_id, "credentials", exc, gmail_api)
        except RateLimitedError as exc:
            await self._failed(account_id, stage, exc, gmail_api, backoff_until=exc.retry_at)
        except (
            ImapError,
            aioimaplib.AioImapException,
            OSError,
            TimeoutError,
            SecretBoxError,
            OAuthTokenError,
            GmailError,
            httpx.HTTPError,
        ) as exc:
            await self._failed(account_id, stage, exc, gmail_api)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self._failed(account_id, "database", exc, gmail_api)
        else:
            metrics.POLL_SECONDS.observe(time.perf_counter() - started)
        return progress.processed

    async def _connect(
        self, account: MailboxAccount, password: str | None, tokens: "_AccountTokens"
    ) -> Mailbox:
        """Log in with the password, or without one (an OAuth2 account) by XOAUTH2.

        A refused token is dropped and a fresh one tried once: a second refusal is the
        mailbox's error (the grant itself refused raises ConsentNeededError on refresh).
        """

        async def connect(secret: str | None, token: str | None) -> Mailbox:
            return await Mailbox.connect(
                account.host or "",
                account.port or 0,
                account.tls or "",
                account.username or "",
                secret,
                timeout_s=self._config.imap_timeout_s,
                ssl_context=self._ssl_context,
                access_token=token,
            )

        if password is not None:
            return await connect(password, None)
        token = await tokens.token()
        try:
            return await connect(None, token)
        except ImapTokenRefusedError:
            await tokens.forget(token)
            return await connect(None, await tokens.token())

    async def _consent_needed(self, error: ConsentNeededError) -> None:
        """The account's grant was refused: pause it (its messages go back to the queue).

        Its mailbox is not read again until someone consents again (queries.mailbox_accounts).
        """
        log.error(
            "account's OAuth grant refused",
            extra={"account_id": str(error.account_id), "reason": error.reason},
        )
        async with self.pool.acquire() as conn:
            paused_at = await pause_for_consent(conn, error, "bouncer")
        if paused_at is not None:
            metrics.ACTIONS.labels("account-paused").inc()
            await self._publish_pause(
                AccountPaused(account_id=error.account_id, reason=error.reason, paused_at=paused_at)
            )

    async def _failed(
        self,
        account_id: UUID,
        stage: str,
        exc: BaseException,
        gmail_api: bool = False,
        backoff_until: datetime | None = None,
    ) -> None:
        metrics.MAILBOX_ERRORS.labels(stage).inc()
        message = f"{stage}: {type(exc).__name__}: {exc}"[:1000]
        log.warning("mailbox not read", extra={"account_id": str(account_id), "error": message})
        with contextlib.suppress(Exception):
            async with self.pool.acquire() as conn:
                if gmail_api:
                    await queries.gmail_failed(conn, account_id, message, backoff_until)
                else:
                    await queries.record_poll(conn, account_id, message)

    async def _read(
        self,
        account: MailboxAccount,
        mailbox: Mailbox,
        stopping: asyncio.Event,
        progress: "_Progress",
    ) -> None:
        selected = await mailbox.select(account.folder)
        async with self.pool.acquire() as conn:
            checkpoint = await queries.checkpoint(conn, account.id)
            if (
                checkpoint is None
                or checkpoint.uidvalidity != selected.uidvalidity
                or checkpoint.folder != account.folder
            ):
                if checkpoint is not None and checkpoint.uidvalidity != 0:
                    log.warning(
                        "mailbox UIDs reassigned or folder changed: reading it from the start",
                        extra={"account_id": str(account.id), "folder": account.folder},
                    )
                await queries.start_checkpoint(
                    conn, account.id, account.folder, selected.uidvalidity
                )
                last_uid = 0
            else:
                last_uid = checkpoint.last_uid
        if last_uid:
            await self._settle(account, mailbox, last_uid)
        folder = Folder(account.id, account.folder, selected.uidvalidity)
        uids = await mailbox.uids_after(last_uid)
        for group in await self._groups(mailbox, uids):
            if stopping.is_set():
                break
            fetched = await mailbox.fetch(group, self._config.max_message_bytes)
            await self.process_group(account, folder, fetched, progress)
            if fetched:
                await self._put_away(account, mailbox, [item.uid for item in fetched])
                self._outbox_wake.set()
        async with self.pool.acquire() as conn:
            await queries.record_poll(conn, account.id, None)
        await self.judge(account)

    async def process_group(
        self, account: MailboxAccount, folder: Folder, fetched: list[Fetched], progress: _Progress
    ) -> None:
        """Process fetched messages in order, then judge the rates if one of them calls for it."""
        rates_due = False
        async with self.pool.acquire() as conn:
            for item in fetched:
                rates_due = await self._process(conn, folder, item) or rates_due
                progress.processed += 1
            if rates_due and account.status == "active":
                await self._publish_pause(await self._processor.judge(conn, account.id))

    async def judge(self, account: MailboxAccount) -> None:
        """Judge an active account's rates (after each poll: see ReportProcessor.judge)."""
        if account.status == "active":
            async with self.pool.acquire() as conn:
                await self._publish_pause(await self._processor.judge(conn, account.id))

    async def _process(self, conn: queries.Conn, folder: Folder, item: Fetched) -> bool:
        """Process one message; whether the account's rates are to be judged."""
        try:
            outcome = await self._processor.process(conn, folder, item)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            raise  # the database is away: stop here, the checkpoint has not moved
        except Exception as exc:
            # Not the database: something in this message broke processing. Keep it as
            # unrecognized (with the error) rather than stall the mailbox on it forever.
            log.exception("report not processed", extra={"uid": item.uid})
            await self._processor.keep_failed(conn, folder, item, f"{type(exc).__name__}: {exc}")
            return False
        return outcome.rates_due

    async def _publish_pause(self, paused: AccountPaused | None) -> None:
        if paused is None:
            return
        try:
            await self.publisher.publish_event(paused, ACCOUNT_PAUSED_KEY)
        except Exception:
            log.exception("AccountPaused not published (its event is recorded)")

    async def _groups(self, mailbox: Mailbox, uids: list[int]) -> list[list[int]]:
        """UIDs in fetch groups: at most fetch_batch messages, and about 2x the size cap."""
        if not uids:
            return []
        sizes = await mailbox.sizes(uids)
        limit = self._config.max_message_bytes
        budget = 2 * limit
        groups: list[list[int]] = []
        current: list[int] = []
        used = 0
        for uid in uids:
            if uid not in sizes:
                continue  # expunged meanwhile
            size = min(sizes[uid], limit)
            if current and (len(current) >= self._config.fetch_batch or used + size > budget):
                groups.append(current)
                current, used = [], 0
            current.append(uid)
            used += size
        if current:
            groups.append(current)
        return groups

    async def _put_away(self, account: MailboxAccount, mailbox: Mailbox, uids: list[int]) -> None:
        """Move processed messages to the processed folder, or flag them Seen."""
        if account.processed_folder:
            await mailbox.move(uids, account.processed_folder)
        else:
            await mailbox.mark_seen(uids)

    async def _settle(self, account: MailboxAccount, mailbox: Mailbox, last_uid: int) -> None:
        """Put away messages processed before but left behind (a crash between commit and IMAP)."""
        criteria = f"UID 1:{last_uid}" if account.processed_folder else f"UID 1:{last_uid} UNSEEN"
        left = [uid for uid in await mailbox.search(criteria) if uid <= last_uid]
        if left:
            await self._put_away(account, mailbox, left)

    # -- Outbox ----------------------------------------------------------------------------

    async def _outbox_loop(self) -> None:
        while not self._stopping.is_set():
            self._outbox_wake.clear()
            try:
                await self.publish_pending()
            except Exception:
                log.exception("feedback not published; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox_wake.wait(), _OUTBOX_IDLE_S)

    async def publish_pending(self) -> int:
        """Publish the bus copies of reports not yet published; how many reports went out."""
        published = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                pending = await queries.unpublished_reports(conn, _OUTBOX_BATCH)
                if not pending:
                    return published
                for report in pending:
                    for feedback in feedback_from_details(
                        report.id,
                        report.account_id,
                        report.kind,
                        report.details,
                        report.received_at,
                    ):
                        await self._publish(feedback)
                await queries.mark_published(conn, [r.id for r in pending])
                published += len(pending)

    async def _publish(self, feedback: Feedback) -> None:
        await self.publisher.publish_event(feedback, FEEDBACK_KEYS[feedback.kind])
        metrics.OUTBOX_PUBLISHED.labels(feedback.kind).inc()
