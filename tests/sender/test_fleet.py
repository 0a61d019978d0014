"""Many accounts on one replica: consumers sharing channels, their recovery and release."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel
from mailfleet_common import topology
from mailfleet_common.messages import SendBatch
from mailfleet_common.settings import RabbitSettings
from mailfleet_sender import queries as sender_queries
from mailfleet_sender.metrics import CONSUMER_RESTORES, MESSAGES
from mailfleet_sender.replica import SenderReplica
from mailfleet_sender.settings import Settings

from tests.sender.conftest import insert_campaign, running_sender, wait_for
from tests.smtp_peer import SmtpPeer
from tests.tracker.proxy import TcpProxy


def _sharing(settings: Settings, per_channel: int, **sender: Any) -> Settings:
    """The test settings with at most `per_channel` consumers on each channel."""
    tuned = settings.sender.model_copy(update={"consumers_per_channel": per_channel, **sender})
    return settings.model_copy(update={"sender": tuned})


async def _insert_accounts(db: Any, port: int, count: int, min_gap_ms: int = 0) -> list[uuid.UUID]:
    rows = await db.fetch(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, from_name,
                              daily_limit, min_gap_ms, status)
        SELECT 'fleet' || i, '127.0.0.1', $1, 'none', 'news@fleet.example.com', 'Fleet',
               1000, $3, 'active'
        FROM generate_series(1, $2) AS i
        RETURNING id
        """,
        port,
        count,
        min_gap_ms,
    )
    return [row["id"] for row in rows]


async def _assign(
    db: Any, campaign: uuid.UUID, accounts: list[uuid.UUID], per_account: int
) -> dict[uuid.UUID, list[int]]:
    """`per_account` messages assigned to each account, as the dispatcher leaves them."""
    owners = [a for a in accounts for _ in range(per_account)]
    rows = await db.fetch(
        """
        INSERT INTO messages (campaign_id, email, name, variables, status, account_id,
                              assigned_at)
        SELECT $1, 'r' || n || '-' || gen_random_uuid() || '@example.org', 'Reader',
               '{"code": "c"}'::jsonb, 'assigned', a, now()
        FROM unnest($2::uuid[]) WITH ORDINALITY AS t (a, n)
        RETURNING id, account_id
        """,
        campaign,
        owners,
    )
    assigned: dict[uuid.UUID, list[int]] = {a: [] for a in accounts}
    for row in sorted(rows, key=lambda r: r["id"]):
        assigned[row["account_id"]].append(row["id"])
    return assigned


@asynccontextmanager
async def _channel(rabbit_url: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        yield await connection.channel()


async def _publish(rabbit_url: str, assigned: dict[uuid.UUID, list[int]]) -> None:
    """One SendBatch per account, all through one channel."""
    async with _channel(rabbit_url) as channel:
        exchange = await channel.get_exchange(topology.SEND.name)
        for account, ids in assigned.items():
            command = SendBatch(
                account_id=account, message_ids=ids, dispatched_at=datetime.now(UTC)
            )
            await exchange.publish(
                aio_pika.Message(
                    command.model_dump_json().encode(),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=str(account),
            )


async def _consumers(rabbit_url: str, accounts: list[uuid.UUID]) -> list[int]:
    """Consumers on each account's queue, as the broker counts them."""
    counts = []
    async with _channel(rabbit_url) as channel:
        for account in accounts:
            queue = await channel.declare_queue(topology.send_queue_name(account), passive=True)
            declared = queue.declaration_result
            counts.append(declared.consumer_count or 0)
    return counts


async def _all_sent(db: Any, ids: list[int]) -> bool:
    count = await db.fetchval(
        "SELECT count(*) FROM messages WHERE id = ANY($1::bigint[]) AND status = 'sent'", ids
    )
    return bool(count == len(ids))


def _arrived_once(smtp_peer: SmtpPeer, expected: int) -> None:
    message_ids = [r.message_id for r in smtp_peer.handler.received]
    assert len(message_ids) == expected
    assert len(set(message_ids)) == expected


def _restores() -> float:
    return sum(
        sample.value
        for sample in next(iter(CONSUMER_RESTORES.collect())).samples
        if sample.name.endswith("_total")
    )


async def test_one_replica_spreads_hundreds_of_accounts_over_a_few_channels_and_serves_each(
    settings: Settings, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    accounts = await _insert_accounts(db, smtp_peer.port, 400)
    campaign = await insert_campaign(db)
    started = time.monotonic()
    async with running_sender(_sharing(settings, 40)) as replica:
        subscribe_s = time.monotonic() - started
        assert set(replica.subscriptions) == set(accounts)
        assert replica.consumer_channels.members == [40] * 10
        assert await _consumers(rabbit_url, accounts) == [1] * len(accounts)
        assigned = await _assign(db, campaign, accounts, 1)
        await _publish(rabbit_url, assigned)
        every = [i for ids in assigned.values() for i in ids]
        await wait_for(lambda: _all_sent(db, every), within=30)
    _arrived_once(smtp_peer, len(accounts))
    assert subscribe_s < 15


async def test_a_channel_error_brings_back_every_account_on_that_channel_without_loss(
    settings: Settings, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    accounts = await _insert_accounts(db, smtp_peer.port, 60, min_gap_ms=100)
    campaign = await insert_campaign(db)
    async with running_sender(_sharing(settings, 20)) as replica:
        assert replica.consumer_channels.members == [20, 20, 20]
        assigned = await _assign(db, campaign, accounts, 5)
        every = [i for ids in assigned.values() for i in ids]
        restores = _restores()
        await _publish(rabbit_url, assigned)
        await wait_for(lambda: _some_sent(db, every))
        # A channel error closes the channel, and with it every consumer on it.
        victim = replica.subscriptions[accounts[0]].channel
        assert victim is not None
        on_victim = [a for a, s in replica.subscriptions.items() if s.channel is victim]
        assert len(on_victim) == 20
        failed_at = time.monotonic()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await victim.declare_queue(
                topology.send_queue_name(accounts[0]), durable=False, robust=False
            )
        await wait_for(lambda: _restored(replica, on_victim), within=10)
        await wait_for(lambda: _restores_above(restores + 19), within=10)
        restored_s = time.monotonic() - failed_at
        await wait_for(lambda: _all_sent(db, every), within=30)
        assert _restores() - restores == 20
        assert await _consumers(rabbit_url, accounts) == [1] * len(accounts)
    _arrived_once(smtp_peer, len(every))
    assert restored_s < 3


async def _some_sent(db: Any, ids: list[int]) -> bool:
    count = await db.fetchval(
        "SELECT count(*) FROM messages WHERE id = ANY($1::bigint[]) AND status = 'sent'", ids
    )
    return bool(count > 0)


async def _restores_above(count: float) -> bool:
    return _restores() > count


async def _restored(replica: SenderReplica, accounts: list[uuid.UUID]) -> bool:
    return all(replica.subscriptions[a].consuming for a in accounts)


async def test_a_deleted_queue_is_declared_again_and_its_account_keeps_receiving(
    settings: Settings, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    accounts = await _insert_accounts(db, smtp_peer.port, 6)
    campaign = await insert_campaign(db)
    async with running_sender(_sharing(settings, 3)) as replica:
        restores = _restores()
        async with _channel(rabbit_url) as channel:
            await channel.queue_delete(topology.send_queue_name(accounts[0]))
        await wait_for(lambda: _restores_above(restores))
        await wait_for(lambda: _restored(replica, accounts))
        assert await _consumers(rabbit_url, accounts) == [1] * len(accounts)
        assigned = await _assign(db, campaign, accounts, 2)
        await _publish(rabbit_url, assigned)
        await wait_for(lambda: _all_sent(db, [i for ids in assigned.values() for i in ids]))
    _arrived_once(smtp_peer, 12)


async def test_archived_accounts_are_unsubscribed_and_new_ones_subscribed_from_changes_only(
    settings: Settings,
    db: Any,
    smtp_peer: SmtpPeer,
    rabbit_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full_reads = 0
    read_all = sender_queries.list_serving_accounts

    async def counted(conn: Any) -> list[sender_queries.AccountRow]:
        nonlocal full_reads
        full_reads += 1
        return await read_all(conn)

    monkeypatch.setattr(sender_queries, "list_serving_accounts", counted)
    accounts = await _insert_accounts(db, smtp_peer.port, 30)
    campaign = await insert_campaign(db)
    async with running_sender(_sharing(settings, 10)) as replica:
        assigned = await _assign(db, campaign, accounts, 1)
        await _publish(rabbit_url, assigned)
        await wait_for(lambda: _all_sent(db, [i for ids in assigned.values() for i in ids]))
        assert _series(accounts) == set(accounts)

        archived, kept = accounts[:20], accounts[20:]
        await db.execute(
            "UPDATE accounts SET status = 'archived', updated_at = now() WHERE id = ANY($1)",
            archived,
        )
        added = await _insert_accounts(db, smtp_peer.port, 2)
        await wait_for(lambda: _serving(replica, {*kept, *added}))
        members = replica.consumer_channels.members
        assert len(members) == 3
        assert sum(members) == 12
        assert max(members) <= 10
        assert await _consumers(rabbit_url, archived) == [0] * len(archived)
        assert await _consumers(rabbit_url, [*kept, *added]) == [1] * 12
        # Their metric series went with them.
        assert _series(accounts) == set(kept)
        # The archived accounts' queues live on: commands in them wait for an unarchive.
        late = await _assign(db, campaign, [archived[0], added[0]], 1)
        await _publish(rabbit_url, late)
        await wait_for(lambda: _all_sent(db, late[added[0]]))
        await asyncio.sleep(0.5)
        waiting = await db.fetchval(
            "SELECT status FROM messages WHERE id = $1", late[archived[0]][0]
        )
        assert waiting == "assigned"
    # Only the first poll read every account; the others read what changed.
    assert full_reads == 1
    _arrived_once(smtp_peer, 31)


async def _serving(replica: SenderReplica, accounts: set[uuid.UUID]) -> bool:
    return set(replica.subscriptions) == accounts


def _series(accounts: list[uuid.UUID]) -> set[uuid.UUID]:
    """The accounts among `accounts` that have a sent-messages series."""
    names = {str(a): a for a in accounts}
    return {
        names[sample.labels["account"]]
        for sample in next(iter(MESSAGES.collect())).samples
        if sample.name.endswith("_total") and sample.labels["account"] in names
    }


async def test_an_account_idle_longer_than_smtp_idle_s_opens_a_new_session(
    settings: Settings, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    accounts = await _insert_accounts(db, smtp_peer.port, 2)
    campaign = await insert_campaign(db)
    async with running_sender(_sharing(settings, 200, smtp_idle_s=2)) as replica:
        connections = [replica.subscriptions[a].account.transport.connections[0] for a in accounts]
        first = await _assign(db, campaign, accounts, 1)
        await _publish(rabbit_url, first)
        await wait_for(lambda: _all_sent(db, [i for ids in first.values() for i in ids]))
        # The first account sends again at once (same session); the second after a pause.
        again = await _assign(db, campaign, accounts[:1], 1)
        await _publish(rabbit_url, again)
        await wait_for(lambda: _all_sent(db, again[accounts[0]]))
        await asyncio.sleep(3.5)
        later = await _assign(db, campaign, accounts[1:], 1)
        await _publish(rabbit_url, later)
        await wait_for(lambda: _all_sent(db, later[accounts[1]]))
        assert [c.sessions for c in connections] == [1, 2]
    _arrived_once(smtp_peer, 4)


async def test_a_lost_connection_brings_back_every_account_on_every_channel(
    settings: Settings, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    parts = urlsplit(rabbit_url)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672).start()
    credentials = parts.netloc.rpartition("@")[0]
    through_proxy = urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}"))
    tuned = _sharing(settings, 10).model_copy(update={"rabbit": RabbitSettings(url=through_proxy)})
    accounts = await _insert_accounts(db, smtp_peer.port, 40)
    campaign = await insert_campaign(db)
    try:
        async with running_sender(tuned) as replica:
            assert len(replica.consumer_channels) == 4
            restores = _restores()
            await proxy.stop()
            await asyncio.sleep(1)
            await proxy.start()
            await wait_for(lambda: _restores_above(restores + 39), within=30)
            await wait_for(lambda: _restored(replica, accounts))
            assert await _consumers(rabbit_url, accounts) == [1] * len(accounts)
            assigned = await _assign(db, campaign, accounts, 2)
            await _publish(rabbit_url, assigned)
            await wait_for(lambda: _all_sent(db, [i for ids in assigned.values() for i in ids]))
    finally:
        await proxy.stop()
    _arrived_once(smtp_peer, 80)
