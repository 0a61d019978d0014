"""One sender replica: its heartbeat, the account queues it consumes, and its shutdown."""

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar
from uuid import UUID

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from mailfleet_common import topology
from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import Pool, create_pool
from mailfleet_common.messages import UrgentSends
from pydantic import ValidationError

from mailfleet_sender import queries
from mailfleet_sender.claims import Committer
from mailfleet_sender.delivery import Connectors, Deliverer, open_account, reconfigure_account
from mailfleet_sender.gmail import GmailApi
from mailfleet_sender.handlers import deliver_send_batch
from mailfleet_sender.membership import Membership, new_replica_id
from mailfleet_sender.metrics import ACCOUNTS
from mailfleet_sender.mime import TemplateCache
from mailfleet_sender.queries import CampaignRow
from mailfleet_sender.reporting import AttemptReporter, EventPublisher
from mailfleet_sender.settings import Settings
from mailfleet_sender.smtp import SessionBudget, SmtpOptions, default_max_sessions
from mailfleet_sender.subscriptions import AccountSubscription, ConsumerChannels
from mailfleet_sender.tokens import AccountTokens
from mailfleet_sender.tracking import Tracker

log = logging.getLogger(__name__)

# A poll reads the accounts changed since shortly before the previous one: a change is
# stamped with its transaction's start, and may commit after a poll that started later.
_CHANGE_OVERLAP = timedelta(seconds=10)

_T = TypeVar("_T")


class SenderReplica:
    """Everything one sender process runs besides its HTTP endpoints."""

    def __init__(self, settings: Settings) -> None:
        """Check the configuration; raises TrackingConfigError without tracking settings."""
        self.settings = settings
        self.replica_id = new_replica_id()
        self.subscriptions: dict[UUID, AccountSubscription] = {}
        # Accounts whose subscription failed: tried again at the next poll.
        self._unsubscribed: dict[UUID, queries.AccountRow] = {}
        self._polled_at: datetime | None = None
        self._full_sync_at = 0.0
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._secrets = (
            SecretBox.from_settings(settings.crypto)
            if settings.crypto.keys.get_secret_value().strip()
            else None
        )
        # Checked here, not at the first message, so a misconfigured sender fails at start.
        self._tracker = Tracker(settings.tracking)
        self._smtp = SmtpOptions(
            timeout_s=settings.sender.smtp_timeout_s,
            validate_certs=settings.sender.smtp_validate_certs,
            helo_name=settings.sender.helo_name or socket.gethostname(),
            sessions=SessionBudget(
                settings.sender.max_sessions or default_max_sessions(),
                settings.sender.max_connecting,
            ),
        )

    @property
    def membership(self) -> Membership:
        return self._membership

    @property
    def consumer_channels(self) -> ConsumerChannels:
        return self._channels

    async def start(self, publisher: EventPublisher) -> None:
        """Connect, subscribe every account (owned ones first), then announce ourselves."""
        settings = self.settings
        # Every statement here is short and keyed by primary keys, and the group commit is
        # written so that its generic plan stays on them: skip re-planning on each execution.
        self._pool: Pool = await create_pool(
            settings.postgres, server_settings={"plan_cache_mode": "force_generic_plan"}
        )
        self._connection: AbstractRobustConnection = await aio_pika.connect_robust(
            settings.rabbit.url.get_secret_value(), reconnect_interval=settings.rabbit.reconnect_s
        )
        await self._declare_topology()
        self._channels = ConsumerChannels(
            self._connection,
            settings.sender.consumers_per_channel,
            settings.sender.prefetch_batches,
        )
        self._reporter = AttemptReporter(
            publisher, settings.sender.report_max, settings.sender.report_linger_ms / 1000
        )
        self._reporter.start()
        self._committer = Committer(
            self._pool,
            self.replica_id,
            self._reporter.add,
            settings.sender.flush_linger_ms,
            settings.sender.flush_max,
            settings.sender.flush_concurrency,
        )
        self._committer.start()
        self._gmail = GmailApi(settings.gmail)
        self._connectors = Connectors(
            self._smtp,
            self._secrets,
            AccountTokens(settings.oauth, self._secrets, self._pool),
            self._gmail,
        )
        self._deliverer = Deliverer(
            settings,
            self._pool,
            self._committer,
            self._reporter,
            publisher,
            TemplateCache(self._load_campaign, settings.templates.limits()),
            self._tracker,
            self._connectors,
        )
        self._membership = Membership(self._pool, self.replica_id, settings.replicas.timeout_s)
        # Registering before the first heartbeat means that, by the time the others see us
        # and step back from the accounts we own, we are already in line behind them.
        await self._membership.observe()
        await self._consume_urgent()
        await self.sync_accounts()
        await self._membership.beat()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="sender-heartbeat"),
            asyncio.create_task(self._account_loop(), name="sender-accounts"),
        ]
        self._started = True
        log.info("sender replica started", extra={"replica": self.replica_id})

    async def stop(self) -> None:
        """Finish messages in hand, write their outcomes, requeue the rest, leave."""
        if not self._started:
            return
        self._started = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Every account finishes its message in hand; closing the channels then cancels
        # the consumers and requeues what they hold, without a round trip per account.
        await asyncio.gather(
            *(self._unsubscribe(a, cancel=False) for a in list(self.subscriptions))
        )
        await self._channels.close()
        await self._committer.close()
        await self._gmail.aclose()
        await self._reporter.close()
        try:
            await self._membership.leave()
        except Exception:
            log.exception("could not delete the replica row")
        await self._connection.close()
        await self._pool.close()
        log.info("sender replica stopped", extra={"replica": self.replica_id})

    async def is_ready(self) -> bool:
        if not self._started or self._connection.is_closed:
            return False
        try:
            async with self._pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
        except Exception:
            return False
        return True

    async def _declare_topology(self) -> None:
        channel = await self._connection.channel()
        try:
            exchanges = {}
            for spec in (topology.SEND, topology.EVENTS, topology.DEAD, topology.URGENT):
                exchanges[spec.name] = await channel.declare_exchange(
                    spec.name, type=spec.type.value, durable=True
                )
            dead = await channel.declare_queue(
                topology.DEAD_LETTER_QUEUE.name,
                durable=True,
                arguments=topology.DEAD_LETTER_QUEUE.arguments,
            )
            await dead.bind(exchanges[topology.DEAD.name])
            # The dispatcher's event queues, so no report is lost while it is not running.
            for queue in (topology.SEND_ATTEMPT_QUEUE, topology.ACCOUNT_PAUSED_QUEUE):
                declared = await channel.declare_queue(
                    queue.name, durable=True, arguments=queue.arguments
                )
                await declared.bind(exchanges[topology.EVENTS.name], routing_key=queue.routing_key)
        finally:
            await channel.close()

    async def _consume_urgent(self) -> None:
        """Listen for transactional messages just assigned (UrgentSends), on a queue of ours.

        Exclusive to this connection and restored with it; notices sent while it was away
        are lost, which only costs time: the dispatcher notices again the messages still not
        claimed a moment later, and the commands follow.
        """
        channel = await self._connection.channel(publisher_confirms=False)
        queue = await channel.declare_queue(
            f"mailfleet.urgent.{self.replica_id}", exclusive=True, auto_delete=True
        )
        await queue.bind(topology.URGENT.name)
        await queue.consume(self._on_urgent, no_ack=True)

    async def _on_urgent(self, message: AbstractIncomingMessage) -> None:
        try:
            notice = UrgentSends.model_validate_json(message.body)
        except ValidationError:
            log.warning("malformed urgent notice ignored")
            return
        subscription = self.subscriptions.get(notice.account_id)
        # Only the account's active consumer sends them, on the account's own connection at
        # its pace; the others keep them in case the account passes to them. Ids already
        # sent through their command are skipped at claim (compare-and-set).
        if subscription is not None:
            subscription.notice(notice.message_ids)
            if subscription.serving:
                self._deliverer.prefetch_contents(notice.message_ids)

    async def _load_campaign(self, campaign_id: UUID) -> CampaignRow | None:
        async with self._pool.acquire() as conn:
            return await queries.fetch_campaign(conn, campaign_id)

    async def sync_accounts(self, full: bool = False) -> None:
        """Subscribe new accounts (owned first), drop archived ones, reload changed ones.

        Reads every account when `full` or on the first call, else only the accounts changed
        since the previous call.
        """
        since = None if full or self._polled_at is None else self._polled_at - _CHANGE_OVERLAP
        async with self._pool.acquire() as conn:
            polled_at = await queries.database_now(conn)
            if since is None:
                rows = await queries.list_serving_accounts(conn)
            else:
                rows = await queries.list_accounts_changed_since(conn, since)
        # Accounts whose subscription failed are tried again (a full read has them anyway).
        changed = {} if since is None else dict(self._unsubscribed)
        changed.update((row.id, row) for row in rows)
        self._unsubscribed.clear()
        if since is None:
            gone = [a for a in self.subscriptions if a not in changed]
        else:
            gone = [a for a, row in changed.items() if row.status == "archived"]
        new = []
        for row in changed.values():
            if row.status == "archived":
                continue
            subscription = self.subscriptions.get(row.id)
            if subscription is None:
                new.append(row)
            elif subscription.account.row.updated_at < row.updated_at:
                reconfigure_account(subscription.account, row, self.settings, self._connectors)
        new.sort(key=lambda row: not self._membership.owns(row.id))
        await self._bounded(self._unsubscribe, [a for a in gone if a in self.subscriptions])
        if new:
            await self._channels.reserve(len(new))
            await self._bounded(self._subscribe, new)
        # A consumer whose restore failed while its channel is back.
        for subscription in self.subscriptions.values():
            if subscription.restorable:
                await subscription.resume()
        self._polled_at = polled_at
        if gone or new:
            self._count_accounts()

    async def _bounded(self, work: Callable[[_T], Awaitable[None]], items: Iterable[_T]) -> None:
        """`work` on every item, at most `subscribe_concurrency` at a time."""
        limit = asyncio.Semaphore(self.settings.sender.subscribe_concurrency)

        async def one(item: _T) -> None:
            async with limit:
                await work(item)

        await asyncio.gather(*(one(item) for item in items))

    async def _subscribe(self, row: queries.AccountRow) -> None:
        account = open_account(row, self.settings, self._connectors)
        subscription = AccountSubscription(
            account,
            partial(deliver_send_batch, self._deliverer, self._membership.lag),
            self._channels,
            partial(self._owned_elsewhere, row.id),
            self._deliverer.deliver_urgent,
        )
        try:
            await subscription.start()
        except Exception as exc:
            log.warning(
                "could not subscribe to the account; trying again at the next poll",
                extra={"account_id": str(row.id), "error": repr(exc)},
            )
            with contextlib.suppress(Exception):
                await subscription.stop()
            self._unsubscribed[row.id] = row
            return
        self.subscriptions[row.id] = subscription

    async def _unsubscribe(self, account_id: UUID, cancel: bool = True) -> None:
        subscription = self.subscriptions.pop(account_id)
        await subscription.stop(cancel)
        subscription.account.forget_metrics()

    def _owned_elsewhere(self, account_id: UUID) -> bool:
        return not self._membership.owns(account_id)

    def _rebalance(self) -> None:
        for account_id, subscription in self.subscriptions.items():
            if not self._membership.owns(account_id):
                subscription.request_cycle()
        self._count_accounts()

    def _count_accounts(self) -> None:
        owned = sum(1 for a in self.subscriptions if self._membership.owns(a))
        ACCOUNTS.labels("owned").set(owned)
        ACCOUNTS.labels("standby").set(len(self.subscriptions) - owned)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sender.heartbeat_s)
            try:
                if await self._membership.beat():
                    self._rebalance()
            except Exception as exc:
                log.warning("heartbeat failed", extra={"error": repr(exc)})

    async def _account_loop(self) -> None:
        loop = asyncio.get_running_loop()
        self._full_sync_at = loop.time() + self.settings.sender.account_full_sync_s
        while True:
            await asyncio.sleep(self.settings.sender.account_poll_s)
            full = loop.time() >= self._full_sync_at
            try:
                await self.sync_accounts(full=full)
            except Exception as exc:
                log.warning("account poll failed", extra={"error": repr(exc)})
            else:
                if full:
                    self._full_sync_at = loop.time() + self.settings.sender.account_full_sync_s
            for subscription in self.subscriptions.values():
                subscription.close_idle_sessions(self.settings.sender.smtp_idle_s)
