"""Account pools across the real processes: a campaign follows its pool as accounts are retagged."""

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import campaign_counts, create_account, start_campaign, wait_until
from tests.stack import Sink, Stack

pytestmark = pytest.mark.slow


@pytest.fixture
async def running(stack: Stack) -> AsyncIterator[tuple[Sink, httpx.AsyncClient]]:
    sink = await stack.start_sink()
    await stack.start_api()
    # One second of each account's pace ahead: what an account holds when it leaves is small.
    await stack.start_dispatcher({"MAILFLEET_DISPATCHER__LOOKAHEAD_S": "1"})
    await stack.start_sender()
    async with aclosing(await stack.admin_client()) as client:
        yield sink, client


async def db_now(db: "asyncpg.Connection[asyncpg.Record]") -> datetime:
    now: datetime = await db.fetchval("SELECT clock_timestamp()")
    return now


async def test_a_running_campaign_follows_its_pool_as_accounts_are_tagged_and_untagged(
    running: tuple[Sink, httpx.AsyncClient], db: "asyncpg.Connection[asyncpg.Record]"
) -> None:
    sink, client = running
    staying = await create_account(client, "staying", sink.port, min_gap_ms=20, tags=["eu"])
    leaving = await create_account(client, "leaving", sink.port, min_gap_ms=20, tags=["eu"])
    joining = await create_account(client, "joining", sink.port, min_gap_ms=20, tags=["us"])
    outsider = await create_account(client, "outsider", sink.port, min_gap_ms=20)
    emails = [f"person{i}@example.org" for i in range(400)]
    campaign_id = await start_campaign(client, [], emails, pools=["eu"])

    async def some_sent() -> bool:
        return (await campaign_counts(client, campaign_id)).get("sent", 0) >= 60

    await wait_until(some_sent, 60, "60 messages sent")
    before_join = time.time()
    joined = await client.patch(f"/api/admin/accounts/{joining['id']}", json={"tags": ["eu", "us"]})
    left = await client.patch(f"/api/admin/accounts/{leaving['id']}", json={"tags": []})
    after_leave = await db_now(db)
    assert (joined.status_code, left.status_code) == (200, 200), (joined.text, left.text)

    async def all_sent() -> bool:
        return (await campaign_counts(client, campaign_id)).get("sent", 0) == 400

    await wait_until(all_sent, 120, "every message sent")

    records = await sink.wait_for_records(400)
    assert len({r["message_id"] for r in records}) == len(records) == 400
    senders = {r["mail_from"] for r in records}
    assert outsider["from_email"] not in senders
    assert (
        await db.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", outsider["id"])
        == 0
    )
    assert {staying["from_email"], leaving["from_email"], joining["from_email"]} <= senders
    assert min(r["at"] for r in records if r["mail_from"] == joining["from_email"]) > before_join
    # Nothing was assigned to the account that left after its untagging returned (what it
    # held then was sent): an assignment's time is its transaction's start.
    last_assigned = await db.fetchval(
        "SELECT max(assigned_at) FROM messages WHERE account_id = $1", leaving["id"]
    )
    assert last_assigned <= after_leave
