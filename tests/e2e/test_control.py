"""Operators' controls take effect within seconds on a running delivery: cancel, pause, limits."""

import asyncio
import time

import asyncpg
import pytest

from tests.e2e.conftest import Fleet, campaign_counts, create_account, start_campaign, wait_until

pytestmark = pytest.mark.slow


async def test_cancel_mid_run_sends_none_of_the_unsent_messages(
    fleet: Fleet, db: "asyncpg.Connection[asyncpg.Record]"
) -> None:
    sink, client = fleet.sink, fleet.client
    account = await create_account(client, "slow", sink.port, min_gap_ms=25)
    emails = [f"person{i}@example.org" for i in range(300)]
    campaign_id = await start_campaign(client, [account["id"]], emails)

    async def some_sent() -> bool:
        return (await campaign_counts(client, campaign_id)).get("sent", 0) >= 30

    await wait_until(some_sent, 60, "30 messages sent")
    response = await client.delete(f"/api/campaigns/{campaign_id}")
    assert response.status_code == 200, response.text
    cancelled_at = time.time()
    assert response.json()["campaign"]["status"] == "cancelled"
    await asyncio.sleep(3.0)
    counts = await campaign_counts(client, campaign_id)

    records = sink.records()
    after = [r for r in records if r["at"] > cancelled_at]
    # Only the message already in the SMTP conversation when cancel returned may finish.
    assert len(after) <= 1
    assert counts.get("sent", 0) == len(records)
    assert counts.get("sent", 0) + counts.get("cancelled", 0) == 300
    assert set(counts) <= {"sent", "cancelled"}
    reserved = await db.fetchval("SELECT sum(reserved) FROM account_daily_usage")
    assert reserved == counts["sent"]


async def test_pausing_an_account_mid_run_moves_the_rest_to_the_others(
    fleet: Fleet, db: "asyncpg.Connection[asyncpg.Record]"
) -> None:
    sink, client = fleet.sink, fleet.client
    paused = await create_account(client, "paused", sink.port, min_gap_ms=20)
    other = await create_account(client, "other", sink.port, min_gap_ms=20)
    emails = [f"person{i}@example.org" for i in range(300)]
    campaign_id = await start_campaign(client, [paused["id"], other["id"]], emails)

    async def some_sent() -> bool:
        return (await campaign_counts(client, campaign_id)).get("sent", 0) >= 40

    await wait_until(some_sent, 60, "40 messages sent")
    response = await client.patch(f"/api/admin/accounts/{paused['id']}", json={"status": "paused"})
    assert response.status_code == 200, response.text
    paused_at = time.time()

    async def all_sent() -> bool:
        return (await campaign_counts(client, campaign_id)).get("sent", 0) == 300

    await wait_until(all_sent, 90, "every message sent")

    late = await db.fetchval(
        "SELECT count(*) FROM messages WHERE account_id = $1 AND sent_at > to_timestamp($2)",
        paused["id"],
        paused_at,
    )
    assert late <= 1
    through_other = await db.fetchval(
        "SELECT count(*) FROM messages WHERE account_id = $1", other["id"]
    )
    assert through_other > 150
    records = await sink.wait_for_records(300)
    assert len({r["message_id"] for r in records}) == len(records) == 300


async def test_reached_limits_hold_the_rest_until_the_next_day(
    fleet: Fleet, db: "asyncpg.Connection[asyncpg.Record]"
) -> None:
    sink, client = fleet.sink, fleet.client
    capped = await create_account(client, "capped", sink.port, daily_limit=5)
    warming = await create_account(
        client,
        "warming",
        sink.port,
        daily_limit=100,
        warmup_enabled=True,
        warmup_initial=3,
        warmup_increment=2,
    )
    first = await start_campaign(client, [capped["id"]], [f"a{i}@example.org" for i in range(12)])
    second = await start_campaign(client, [warming["id"]], [f"b{i}@example.org" for i in range(12)])

    async def today_done() -> bool:
        a = await campaign_counts(client, first)
        b = await campaign_counts(client, second)
        return a.get("sent", 0) == 5 and b.get("sent", 0) == 3

    await wait_until(today_done, 30, "today's limits used up")
    await asyncio.sleep(2.0)
    assert (await campaign_counts(client, first)) == {"sent": 5, "queued": 7}
    assert (await campaign_counts(client, second)) == {"sent": 3, "queued": 9}

    # Midnight UTC: today's usage becomes yesterday's, and the warm-up is a day older.
    await db.execute("UPDATE account_daily_usage SET day = day - 1")
    await db.execute(
        "UPDATE accounts SET warmup_started_on = warmup_started_on - 1 WHERE id = $1",
        warming["id"],
    )

    async def next_day_done() -> bool:
        a = await campaign_counts(client, first)
        b = await campaign_counts(client, second)
        return a.get("sent", 0) == 10 and b.get("sent", 0) == 8

    await wait_until(next_day_done, 30, "the next day's limits used up")
    await asyncio.sleep(2.0)
    assert (await campaign_counts(client, first)) == {"sent": 10, "queued": 2}
    assert (await campaign_counts(client, second)) == {"sent": 8, "queued": 4}
    assert len(sink.records()) == 18
