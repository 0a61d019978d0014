"""Delivery through faults, across the real processes on a private PostgreSQL and RabbitMQ.

Each test is a reduced run of the chaos benchmark (bench/chaos.py): a paced campaign, 2 % of
messages answered 451 by the SMTP server, and the faults injected mid-run. A stall is the
longest gap in arrivals at the SMTP server from a fault's start until the next fault.
"""

import asyncio
import time
import uuid
from contextlib import aclosing
from typing import Any

import asyncpg
import pytest
from mailfleet_common.crypto import generate_key

from bench.chaos import CHAOS_ENV, Options, run_chaos, stall_after
from tests.e2e.conftest import create_account
from tests.private_servers import PrivatePostgres, PrivateRabbit
from tests.stack import Stack

pytestmark = pytest.mark.slow


def test_a_stall_is_the_longest_gap_from_the_fault_until_arrivals_resume() -> None:
    arrivals = [9.0, 10.0, 10.5, 13.5, 14.0, 14.2, 19.0, 20.0]
    assert stall_after(arrivals, 10.2, 14.1) == 3.0  # 10.5 -> 13.5
    assert stall_after(arrivals, 11.0, 12.0) == 2.5  # from the fault to 13.5, past the window
    assert stall_after(arrivals, 14.1, 16.0) == pytest.approx(4.8)  # 14.2 -> 19.0 begins in it
    assert stall_after(arrivals, 20.5, 22.0) == 1.5  # nothing arrived after the fault


def assert_exact(report: dict[str, Any]) -> None:
    assert report["duplicates"] == 0, report
    assert report["lost"] == 0, report
    assert report["uncertain"] <= sum(report["in_flight_at_kills"]), report


async def test_postgres_restarting_mid_run_leaves_no_message_sending_or_uncertain() -> None:
    report = await run_chaos(
        Options(
            messages=1500,
            accounts=6,
            min_gap_ms=20,
            first_fault_s=2.0,
            faults=["postgres_restart"],
            postgres_down_s=2.5,
            settle_within_s=90,
        )
    )

    assert_exact(report)
    assert report["uncertain"] == 0, report
    assert set(report["statuses"]) == {"sent"}, report
    assert report["max_stall_s"]["postgres_restart"] < 5.0, report


async def test_delivery_resumes_within_5_s_after_a_broker_restart_and_each_kill() -> None:
    report = await run_chaos(
        Options(
            messages=3000,
            accounts=6,
            min_gap_ms=20,
            first_fault_s=2.0,
            fault_every_s=4.0,
            faults=["broker_restart", "dispatcher_kill", "sender_kill", "api_kill"],
            settle_within_s=90,
        )
    )

    assert_exact(report)
    assert set(report["statuses"]) <= {"sent", "uncertain"}, report
    for kind in ("broker_restart", "dispatcher_kill", "sender_kill", "api_kill"):
        assert report["max_stall_s"][kind] < 5.0, report


async def test_messages_assigned_without_a_command_are_commanded_again_within_seconds() -> None:
    # What a dispatcher killed between its assignment commit and its publish leaves behind:
    # messages `assigned` to an account, filling its look-ahead, with no command on the bus.
    async with (
        PrivatePostgres() as postgres,
        PrivateRabbit() as rabbit,
        Stack(
            postgres_dsn=await postgres.create_database("lost"),
            rabbit_url=rabbit.url,
            crypto_keys=generate_key(),
            env=CHAOS_ENV,
        ) as stack,
    ):
        sink = await stack.start_sink()
        await stack.start_api()
        await stack.start_dispatcher()
        await stack.start_sender()
        async with aclosing(await stack.admin_client()) as client:
            account = await create_account(client, "lost", sink.port)
            response = await client.post(
                "/api/campaigns",
                json={"name": "lost", "subject": "Hi", "text_body": "Hi {{ name }}",
                      "account_ids": [account["id"]]},
            )  # fmt: skip
            assert response.status_code == 201, response.text
            campaign_id = response.json()["id"]
            emails = [f"person{i}@example.org" for i in range(200)]
            response = await client.post(
                "/api/queue/enqueue",
                json={"campaign_id": campaign_id, "recipients": [{"email": e} for e in emails]},
            )
            assert response.status_code == 202, response.text
        await asyncio.sleep(2.0)  # the sender subscribes to the new account's queue
        db = await asyncpg.connect(stack.env["MAILFLEET_POSTGRES__DSN"])
        try:
            async with db.transaction():
                await db.execute(
                    """
                    UPDATE messages SET status = 'assigned', account_id = $1, assigned_at = now()
                    WHERE campaign_id = $2
                    """,
                    uuid.UUID(account["id"]),
                    uuid.UUID(campaign_id),
                )
                await db.execute(
                    "UPDATE campaigns SET status = 'running' WHERE id = $1", uuid.UUID(campaign_id)
                )
            committed = time.time()
            records = await sink.wait_for_records(200, within_s=30)
        finally:
            await db.close()

    arrivals = sorted(r["at"] for r in records)
    assert sorted(r["recipients"][0] for r in records) == sorted(emails)
    # The stall watch notices after `stall_s` (1.5 s) without movement; the stranded sweep
    # would have taken a minute.
    assert arrivals[0] - committed < 4.0
    assert arrivals[-1] - committed < 8.0
