"""The operator metrics across the real processes: fleet gauges, latencies, process metrics."""

import time
from contextlib import aclosing
from typing import Any

import aio_pika
import httpx
import pytest
from mailfleet_common import topology
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import create_account, start_campaign, wait_until
from tests.e2e.test_tracking import BROWSER, HUMAN_WINDOW, links_of, part, wait_delivered
from tests.stack import ServiceProcess, Stack

pytestmark = pytest.mark.slow

FLEET_SERIES = "mailfleet_backlog_messages"
GAUGES_EVERY = {"MAILFLEET_DISPATCHER__FLEET_GAUGES_S": "0.5"}


async def scrape(service: ServiceProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{service.url}/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def exports_fleet(samples: dict[Any, float]) -> bool:
    return any(name == FLEET_SERIES for name, _ in samples)


async def forget_earlier_reports(rabbit_url: str) -> None:
    """Empty the queues the dispatcher records from.

    Reports earlier tests left on the session's broker name message ids that this test's
    database gives out again (identities restart with each test): recorded first, they
    would take the place of this test's own.
    """
    queues = [topology.SEND_ATTEMPT_QUEUE, *topology.TRACKING_QUEUES.values()]
    connection = await aio_pika.connect(rabbit_url)
    async with connection:
        for spec in queues:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(spec.name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                continue  # never declared: nothing left in it
            await queue.purge()


async def test_delivery_and_tracking_latencies_and_the_fleet_gauges_of_one_replica(
    stack: Stack, db: Any, rabbit_url: str
) -> None:
    await forget_earlier_reports(rabbit_url)
    sink = await stack.start_sink(maildir=True)
    api = await stack.start_api()
    first = await stack.start_dispatcher(GAUGES_EVERY)
    sender = await stack.start_sender()
    await stack.start_tracker(HUMAN_WINDOW)
    async with aclosing(await stack.admin_client()) as client:
        account = await create_account(client, "metrics", sink.port, daily_limit=500)
        recipients = [f"reader{i}@example.org" for i in range(3)]
        await start_campaign(client, [account["id"]], recipients)
    message = await wait_delivered(sink, "reader0@example.org")
    for address in recipients[1:]:
        await wait_delivered(sink, address)

    async def delivered_three() -> bool:
        return value(await scrape(sender), "mailfleet_delivery_latency_seconds_count") == 3

    await wait_until(delivered_three, 10, "three delivery latencies observed")
    sent = await scrape(sender)
    assert 0 < (value(sent, "mailfleet_delivery_latency_seconds_sum") or 0) < 3 * 30

    [pixel] = [src for src in links_of(part(message, "html")).images if "/track/open/" in src]
    async with httpx.AsyncClient(headers=BROWSER) as browser:
        assert (await browser.get(pixel)).status_code == 200

    async def open_recorded() -> bool:
        samples = await scrape(first)
        return value(samples, "mailfleet_tracking_record_latency_seconds_count", kind="open") == 1

    await wait_until(open_recorded, 15, "the open's record latency observed")

    async def counted_sent() -> bool:
        samples = await scrape(first)
        return value(samples, "mailfleet_account_sent_today", account=account["id"]) == 3

    await wait_until(counted_sent, 10, "the fleet gauges counting the three sends")
    samples = await scrape(first)
    assert value(samples, "mailfleet_account_daily_limit", account=account["id"]) == 500
    assert value(samples, "mailfleet_backlog_messages", state="queued") == 0
    assert value(samples, "mailfleet_accounts", status="active") == 1

    # A second replica waits for the lock and exports none of the fleet series; it takes
    # over within an interval or two of the first being killed.
    second = await stack.start_dispatcher(GAUGES_EVERY)
    await wait_until(lambda: _has_run(second), 5, "the second replica's first interval")
    assert not exports_fleet(await scrape(second))
    assert exports_fleet(await scrape(first))
    await first.kill()

    async def took_over() -> bool:
        return exports_fleet(await scrape(second))

    await wait_until(took_over, 5, "the second replica to take the fleet gauges over")

    process = await scrape(api)
    assert (value(process, "process_resident_memory_bytes") or 0) > 10_000_000
    assert value(process, "process_start_time_seconds")


async def _has_run(service: ServiceProcess) -> bool:
    """Whether the dispatcher has been up for more than two fleet-gauge intervals."""
    started = value(await scrape(service), "process_start_time_seconds") or 0
    return bool(started) and time.time() - started > 1.5
