"""Several sender replicas: accounts spread over them, and handed over when one goes away."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from mailfleet_sender.membership import owner_of
from mailfleet_sender.replica import SenderReplica
from mailfleet_sender.settings import Settings

from tests.sender.conftest import (
    insert_account,
    insert_campaign,
    insert_messages,
    publish_batch,
    running_sender,
    statuses,
    wait_for,
)
from tests.smtp_peer import SmtpPeer


async def _sent_by(db: Any, ids: list[int]) -> dict[int, str] | None:
    rows = await db.fetch(
        "SELECT id, status, sender_replica FROM messages WHERE id = ANY($1::bigint[])", ids
    )
    if any(row["status"] != "sent" for row in rows):
        return None
    return {row["id"]: row["sender_replica"] for row in rows}


# 200: every account on one channel; 3: the accounts spread over several shared channels.
@pytest.mark.parametrize("per_channel", [200, 3])
async def test_two_replicas_split_accounts_and_one_stopping_hands_its_accounts_to_the_other(
    settings: Settings, db: Any, smtp_peer: SmtpPeer, rabbit_url: str, per_channel: int
) -> None:
    tuned = settings.sender.model_copy(update={"consumers_per_channel": per_channel})
    settings = settings.model_copy(update={"sender": tuned})
    first, second = SenderReplica(settings), SenderReplica(settings)
    both = frozenset({first.replica_id, second.replica_id})
    accounts = [await insert_account(db, smtp_peer.port) for _ in range(8)]
    while {owner_of(a, both) for a in accounts} != both:
        accounts.append(await insert_account(db, smtp_peer.port))
    campaign = await insert_campaign(db)

    async with running_sender(settings, first):
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(running_sender(settings, second))
            await wait_for(lambda: _see(first, both))
            await wait_for(lambda: _see(second, both))
            await asyncio.sleep(settings.sender.heartbeat_s * 3)  # the hand-over cycles settle

            batches = {
                a: await insert_messages(
                    db, campaign, a, [f"{a.hex[:8]}-{i}@example.org" for i in range(3)]
                )
                for a in accounts
            }
            for account, ids in batches.items():
                await publish_batch(rabbit_url, account, ids)
            every = [i for ids in batches.values() for i in ids]
            senders = await wait_for(lambda: _sent_by(db, every))
            for account, ids in batches.items():
                assert {senders[i] for i in ids} == {owner_of(account, both)}

        # `second` stopped cleanly: its row is gone and `first` serves every account.
        assert (
            await db.fetchval(
                "SELECT count(*) FROM sender_replicas WHERE id = $1", second.replica_id
            )
            == 0
        )
        later = {
            a: await insert_messages(db, campaign, a, [f"{a.hex[:8]}-late@example.org"])
            for a in accounts
        }
        started = time.monotonic()
        for account, ids in later.items():
            await publish_batch(rabbit_url, account, ids)
        senders = await wait_for(lambda: _sent_by(db, [i for ids in later.values() for i in ids]))
        assert set(senders.values()) == {first.replica_id}
        assert time.monotonic() - started < 5
    assert len(smtp_peer.handler.received) == len(accounts) * 4


async def _see(replica: SenderReplica, replicas: frozenset[str]) -> bool:
    return replica.membership.live == replicas


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def sender_process(settings: Settings) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`mailfleet-sender` in its own process, configured through the environment."""
    port = _free_port()
    env = {
        **os.environ,
        "MAILFLEET_POSTGRES__DSN": settings.postgres.dsn,
        "MAILFLEET_RABBIT__URL": settings.rabbit.url.get_secret_value(),
        "MAILFLEET_CRYPTO__KEYS": settings.crypto.keys.get_secret_value(),
        "MAILFLEET_TRACKING__KEYS": settings.tracking.keys.get_secret_value(),
        "MAILFLEET_TRACKING__BASE_URL": settings.tracking.base_url,
        "MAILFLEET_HTTP__PORT": str(port),
        "MAILFLEET_SENDER__HEARTBEAT_S": str(settings.sender.heartbeat_s),
        "MAILFLEET_REPLICAS__TIMEOUT_S": str(settings.replicas.timeout_s),
        "MAILFLEET_SENDER__ACCOUNT_POLL_S": str(settings.sender.account_poll_s),
        "MAILFLEET_LOG_LEVEL": "WARNING",
    }
    script = os.path.join(os.path.dirname(sys.executable), "mailfleet-sender")
    process = subprocess.Popen([script], env=env, stderr=subprocess.DEVNULL)
    yield process, port
    if process.poll() is None:
        process.kill()
        process.wait(10)


async def _ready(port: int) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/ready")
    except httpx.HTTPError:
        return False
    return response.status_code == 200


@pytest.mark.slow
async def test_sigterm_finishes_the_message_in_hand_requeues_the_rest_and_exits_cleanly(
    sender_process: tuple[subprocess.Popen[bytes], int],
    settings: Settings,
    db: Any,
    smtp_peer: SmtpPeer,
    rabbit_url: str,
) -> None:
    process, port = sender_process
    account = await insert_account(db, smtp_peer.port, min_gap_ms=50)
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, account, [f"s{i}@example.org" for i in range(60)])
    await wait_for(lambda: _ready(port), within=20)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert "mailfleet_sender_accounts" in metrics

    await publish_batch(rabbit_url, account, ids)
    await wait_for(lambda: _some_sent(db, ids))
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 20) == 0

    states = await statuses(db, ids)
    assert "sending" not in states
    assert 0 < states.count("sent") < len(ids)
    assert await db.fetchval("SELECT count(*) FROM sender_replicas") == 0
    # The command went back to the queue: a new replica finishes the rest, once each.
    async with running_sender(settings):
        await wait_for(lambda: _all_sent(db, ids), within=20)
    assert sorted(r.recipient for r in smtp_peer.handler.received) == sorted(
        f"s{i}@example.org" for i in range(60)
    )


@pytest.mark.slow
async def test_a_killed_replica_hands_its_account_to_a_standby_within_seconds(
    sender_process: tuple[subprocess.Popen[bytes], int],
    settings: Settings,
    db: Any,
    smtp_peer: SmtpPeer,
    rabbit_url: str,
) -> None:
    process, port = sender_process
    await wait_for(lambda: _ready(port), within=20)
    killed = await db.fetchval("SELECT id FROM sender_replicas")
    standby = SenderReplica(settings)
    pair = frozenset({killed, standby.replica_id})
    account = await insert_account(db, smtp_peer.port, min_gap_ms=50)
    while owner_of(account, pair) != killed:
        account = await insert_account(db, smtp_peer.port, min_gap_ms=50)
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, account, [f"k{i}@example.org" for i in range(80)])
    await asyncio.sleep(1)  # the other process polls accounts and subscribes this one

    async with running_sender(settings, standby):
        await wait_for(lambda: _see(standby, pair))
        await publish_batch(rabbit_url, account, ids)
        await wait_for(lambda: _some_sent(db, ids))
        process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        process.wait(10)
        await wait_for(lambda: _sent_by_replica(db, ids, standby.replica_id), within=10)
        takeover = time.monotonic() - killed_at
        await wait_for(lambda: _none_assigned(db, ids), within=20)

    states = await statuses(db, ids)
    assert states.count("sending") <= 1  # the dispatcher's sweep makes it `uncertain`
    recipients = [r.recipient for r in smtp_peer.handler.received]
    assert len(recipients) == len(set(recipients))
    assert takeover < 3, takeover


async def _some_sent(db: Any, ids: list[int]) -> bool:
    return "sent" in await statuses(db, ids)


async def _all_sent(db: Any, ids: list[int]) -> bool:
    return set(await statuses(db, ids)) == {"sent"}


async def _none_assigned(db: Any, ids: list[int]) -> bool:
    return "assigned" not in await statuses(db, ids)


async def _sent_by_replica(db: Any, ids: list[int], replica: str) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM messages WHERE id = ANY($1::bigint[]) AND status = 'sent' "
            "AND sender_replica = $2",
            ids,
            replica,
        )
    )
