"""The webhook worker as processes against a real receiver process that fails, then recovers."""

import asyncio
import json
import re
import time
from collections import Counter
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from tests.stack import Stack
from tests.webhooks.conftest import FAST_WORKER_ENV, Receiver, add_endpoint

Db = "asyncpg.Connection[asyncpg.Record]"

EVENT_TYPES = [
    "queued", "sent", "deferred", "failed", "uncertain", "opened", "clicked", "unsubscribed",
    "bounced", "complained", "replied", "account-paused", "account-resumed", "campaign-completed",
]  # fmt: skip


async def insert_events(db: Db, count: int) -> list[int]:
    """`count` events of every webhook type in turn, committed a few at a time."""
    ids: list[int] = []
    for start in range(0, count, 25):
        types = [EVENT_TYPES[i % len(EVENT_TYPES)] for i in range(start, min(count, start + 25))]
        rows = await db.fetch(
            """
            INSERT INTO events (occurred_at, type, data)
            SELECT now(), t, jsonb_build_object('n', n)
            FROM unnest($1::text[], $2::int[]) AS u (t, n)
            RETURNING id
            """,
            types,
            list(range(start, start + len(types))),
        )
        ids += [r["id"] for r in rows]
    return ids


async def wait_for(condition: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.1)


def verified(receiver: Receiver, secret: str) -> list[tuple[str, dict[str, Any]]]:
    """Every request received, its signature verified: (webhook-id, payload)."""
    signer = Webhook(secret)
    return [
        (r["headers"]["webhook-id"], signer.verify(r["body"], r["headers"]))
        for r in receiver.records()
    ]


async def test_every_event_arrives_signed_through_failures_timeouts_and_a_killed_worker(
    db: Db, crypto_keys: str, receiver: Receiver, stack: Stack
) -> None:
    endpoint_id, secret = await add_endpoint(db, crypto_keys, f"{receiver.url}/hooks")
    await receiver.set_mode("fail")
    first, second = await stack.start_webhooks(), await stack.start_webhooks()
    ids = await insert_events(db, 150)

    async def failed_some() -> bool:
        return len(receiver.records()) >= 100

    await wait_for(failed_some, 20, "the first attempts, all answered 500")
    await receiver.set_mode("hang")
    await asyncio.sleep(1.5)  # requests time out (1 s) and are retried
    await receiver.set_mode("ok", delay_s=0.2)  # slow answers: requests are in flight

    async def some_delivered() -> bool:
        return bool(
            await db.fetchval(
                "SELECT count(*) >= 20 FROM webhook_deliveries WHERE status = 'delivered'"
            )
        )

    await wait_for(some_delivered, 20, "deliveries succeeding")
    await first.kill()  # SIGKILL with requests in flight: their leases expire (3 s)
    more = await insert_events(db, 60)
    await stack.start_webhooks()

    async def all_delivered() -> bool:
        return not await db.fetchval(
            "SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'"
        )

    await wait_for(all_delivered, 60, "every delivery delivered")
    assert second.running
    received = verified(receiver, secret)  # every signature verifies, or this raises
    accepted = [r["headers"]["webhook-id"] for r in receiver.records() if r["status"] == 200]
    expected = {f"msg_{i}" for i in ids + more}
    assert set(accepted) == expected  # every event arrived, and was answered 2xx
    assert {webhook_id for webhook_id, _ in received} == expected
    # At least once: a copy seen twice is the same message (same webhook-id, same body).
    bodies: dict[str, set[str]] = {}
    for record in receiver.records():
        bodies.setdefault(record["headers"]["webhook-id"], set()).add(record["body"])
    assert all(len(b) == 1 for b in bodies.values())
    duplicates = sum(n - 1 for n in Counter(accepted).values())
    assert duplicates <= 8 * 2  # at most what the killed worker had in flight to the endpoint
    by_id = dict(received)
    sample = by_id[f"msg_{ids[0]}"]
    assert sample["type"] == "message.queued"
    assert sample["data"]["details"] == {"n": 0}
    attempts = await db.fetchval(
        "SELECT count(*) FROM webhook_attempts WHERE endpoint_id = $1 AND status_code = 500",
        endpoint_id,
    )
    assert attempts >= 100
    timeouts = await db.fetchval(
        "SELECT count(*) FROM webhook_attempts WHERE error LIKE 'timed out%'"
    )
    assert timeouts > 0


async def test_a_delivery_is_given_up_after_its_schedule_with_the_response_logged(
    db: Db, crypto_keys: str, receiver: Receiver, stack: Stack
) -> None:
    await add_endpoint(db, crypto_keys, receiver.url)
    await receiver.set_mode("fail")
    await stack.start_webhooks({"MAILFLEET_WEBHOOKS__RETRY_SCHEDULE_S": "[0.1, 0.1]"})
    [event_id] = await insert_events(db, 1)

    async def given_up() -> bool:
        return await db.fetchval("SELECT status FROM webhook_deliveries") == "failed"

    await wait_for(given_up, 10, "the delivery failed")
    rows = await db.fetch("SELECT * FROM webhook_attempts ORDER BY attempt")
    assert [r["attempt"] for r in rows] == [1, 2, 3]
    assert {r["status_code"] for r in rows} == {500}
    assert all(len(r["response"]) == 4096 for r in rows)  # 10 kB answered, 4 kB kept
    assert [r["headers"]["webhook-id"] for r in receiver.records()] == [f"msg_{event_id}"] * 3


async def test_private_destinations_are_refused_without_a_request_by_default(
    db: Db, crypto_keys: str, receiver: Receiver, stack: Stack
) -> None:
    await add_endpoint(db, crypto_keys, receiver.url)  # on 127.0.0.1
    await stack.start_webhooks(
        {
            "MAILFLEET_WEBHOOKS__ALLOW_PRIVATE_DESTINATIONS": "false",
            "MAILFLEET_WEBHOOKS__RETRY_SCHEDULE_S": "[0.1]",
        }
    )
    await insert_events(db, 1)

    async def given_up() -> bool:
        return await db.fetchval("SELECT status FROM webhook_deliveries") == "failed"

    await wait_for(given_up, 10, "the delivery failed")
    rows = await db.fetch("SELECT status_code, error FROM webhook_attempts")
    assert len(rows) == 2
    for row in rows:
        assert row["status_code"] is None
        assert "resolves to 127.0.0.1, not a public address" in row["error"]
    assert receiver.records() == []


async def test_an_endpoint_failing_persistently_is_disabled_with_a_notice(
    db: Db, crypto_keys: str, receiver: Receiver, stack: Stack
) -> None:
    endpoint_id, _ = await add_endpoint(db, crypto_keys, receiver.url)
    await receiver.set_mode("fail")
    worker = await stack.start_webhooks(
        {
            "MAILFLEET_WEBHOOKS__DISABLE_AFTER_FAILURES": "5",
            "MAILFLEET_WEBHOOKS__DISABLE_AFTER_S": "0",
        }
    )
    ids = await insert_events(db, 3)

    async def disabled() -> bool:
        return not await db.fetchval(
            "SELECT enabled FROM webhook_endpoints WHERE id = $1", endpoint_id
        )

    await wait_for(disabled, 10, "the endpoint disabled")
    endpoint = await db.fetchrow("SELECT * FROM webhook_endpoints WHERE id = $1", endpoint_id)
    assert re.fullmatch(
        r"disabled after \d+ consecutive failed attempts since \S+Z", endpoint["disabled_reason"]
    )
    event = await db.fetchrow("SELECT * FROM events WHERE type = 'webhook-endpoint-disabled'")
    assert json.loads(event["data"]) == {
        "endpoint_id": str(endpoint_id),
        "reason": endpoint["disabled_reason"],
    }
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{worker.url}/metrics")).text
    assert "mailfleet_webhooks_endpoints_disabled_total 1.0" in metrics
    assert "webhook endpoint disabled" in worker.log_tail(200)
    seen = len(receiver.records())
    await asyncio.sleep(1)
    assert len(receiver.records()) == seen  # nothing more is sent to it

    # Enabled again, with the receiver back: what was pending goes out.
    await receiver.set_mode("ok")
    await db.execute(
        "UPDATE webhook_endpoints SET enabled = true, disabled_reason = NULL, "
        "consecutive_failures = 0, failing_since = NULL WHERE id = $1",
        endpoint_id,
    )

    async def delivered() -> bool:
        return {r["headers"]["webhook-id"] for r in receiver.records() if r["status"] == 200} == {
            f"msg_{i}" for i in ids
        }

    await wait_for(delivered, 10, "the pending deliveries delivered")


async def test_sigterm_stops_the_worker_cleanly(receiver: Receiver, stack: Stack) -> None:
    worker = await stack.start_webhooks()
    assert await worker.stop() == 0
    assert FAST_WORKER_ENV  # the stack's settings were used
