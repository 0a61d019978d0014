"""One sender replica: its heartbeat, the account queues it consumes, and its shutdown."""

import asyncio
import contextlib
import logging
import socket
from functools import partial
from uuid import UUID

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from mailfleet_common import topology
from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import Pool, create_pool

from mailfleet_sender import queries
from mailfleet_sender.claims import Committer
from mailfleet_sender.delivery import Deliverer, open_account, reconfigure_account
from mailfleet_sender.handlers import deliver_send_batch
from mailfleet_sender.membership import Membership, new_replica_id
from mailfleet_sender.metrics import ACCOUNTS
from mailfleet_sender.mime import TemplateCache
from mailfleet_sender.queries import CampaignRow
from mailfleet_sender.reporting import AttemptReporter, EventPublisher
from mailfleet_sender.settings import Settings
from mailfleet_sender.smtp import SmtpOptions
from mailfleet_sender.subscriptions import AccountSubscription
from mailfleet_sender.tracking import Tracker

log = logging.getLogger(__name__)


class SenderReplica:
    """Everything one sender process runs besides its HTTP endpoints."""

    def __init__(self, settings: Settings) -> None:
        """Check the configuration; raises TrackingConfigError without tracking settings."""
        self.settings = settings
        self.replica_id = new_replica_id()
        self.subscriptions: dict[UUID, AccountSubscription] = {}
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
        )

    @property
    def membership(self) -> Membership:
        return self._membership

    async def start(self, publisher: EventPublisher) -> None:
        """Connect, subscribe every account (owned ones first), then announce ourselves."""
        settings = self.settings
        # Every statement here is short and keyed by primary keys, and the group commit is
        # written so that its generic plan stays on them: skip re-planning on each execution.
        self._pool: Pool = await create_pool(
            settings.postgres, server_settings={"plan_cache_mode": "force_generic_plan"}
        )
        self._connection: AbstractRobustConnection = await aio_pika.connect_robust(
            settings.rabbit.url.get_secret_value()
        )
        await self._declare_topology()
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
        self._deliverer = Deliverer(
            settings,
            self._pool,
            self._committer,
            self._reporter,
            publisher,
            TemplateCache(self._load_campaign, settings.templates.limits()),
            self._tracker,
            self._secrets,
        )
        self._membership = Membership(self._pool, self.replica_id, settings.replicas.timeout_s)
        # Registering before the first heartbeat means that, by the time the others see us
        # and step back from the accounts we own, we are already in line behind them.
        await self._membership.observe()
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
        await asyncio.gather(*(sub.stop() for sub in self.subscriptions.values()))
        self.subscriptions.clear()
        await self._committer.close()
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
            for spec in (topology.SEND, topology.EVENTS, topology.DEAD):
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

    async def _load_campaign(self, campaign_id: UUID) -> CampaignRow | None:
        async with self._pool.acquire() as conn:
            return await queries.fetch_campaign(conn, campaign_id)

    async def sync_accounts(self) -> None:
        """Subscribe new accounts (owned first), drop archived ones, reload changed ones."""
        async with self._pool.acquire() as conn:
            rows = await queries.list_serving_accounts(conn)
        rows.sort(key=lambda row: not self._membership.owns(row.id))
        for row in rows:
            subscription = self.subscriptions.get(row.id)
            if subscription is not None and subscription.broken:
                log.warning("replacing a broken subscription", extra={"account_id": str(row.id)})
                await subscription.stop()
                del self.subscriptions[row.id]
                subscription = None
            if subscription is None:
                await self._subscribe(row)
            elif subscription.account.row.updated_at != row.updated_at:
                reconfigure_account(subscription.account, row, self._secrets)
        current = {row.id for row in rows}
        for account_id in [a for a in self.subscriptions if a not in current]:
            await self.subscriptions.pop(account_id).stop()
        self._count_accounts()

    async def _subscribe(self, row: queries.AccountRow) -> None:
        account = open_account(row, self.settings, self._smtp, self._secrets)
        subscription = AccountSubscription(
            account,
            partial(deliver_send_batch, self._deliverer),
            self.settings.sender.prefetch_batches,
            partial(self._owned_elsewhere, row.id),
        )
        try:
            await subscription.start(self._connection)
        except Exception:
            log.exception("could not subscribe to the account", extra={"account_id": str(row.id)})
            with contextlib.suppress(Exception):
                await subscription.stop()
            return
        self.subscriptions[row.id] = subscription

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
        while True:
            await asyncio.sleep(self.settings.sender.account_poll_s)
            try:
                await self.sync_accounts()
            except Exception as exc:
                log.warning("account poll failed", extra={"error": repr(exc)})
