"""Fleet benchmark: the same 10,000 messages over 50, 1,000 and 10,000 active accounts.

Each size runs on its own throwaway database and vhost, with the real api, dispatcher and
two sender replicas against the capture server (mailfleet-sink). Accounts are created
through the API (16 requests at a time), with the senders stopped; then the senders start,
and the time until both have subscribed every account is `subscribe_s_<n>`. A campaign
naming no accounts (so it uses every account) gets the recipients in one enqueue call; the
rate is delivered messages over the time from the campaign's start to the last arrival.

Prints one JSON line: emails_per_s_<n> for each size, ratio_1000 and ratio_10000 (against
the 50-account run of the same invocation), sender_rss_mb_10000 (the largest replica's
peak resident memory during the 10,000-account run), subscribe_s_10000, duplicates and
lost (by Message-ID at the sink, over all runs), error_log_lines (lines at ERROR or above
in every service's log, over all runs), and per-run details under `runs`. After the largest
run every account is archived through the API, and sender_rss_mb_10000_archived is the
largest replica's memory once both have let go of them all.

    uv run python -m bench.fleet [--messages 10000] [--sizes 50,1000,10000] [--senders 2]
"""

import argparse
import asyncio
import json
import sys
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvloop
from mailfleet_common.crypto import generate_key

from bench import content
from bench.scratch import Scratch, cpu_seconds, server_pids
from tests.stack import ServiceProcess, Stack

CREATE_CONCURRENCY = 16
DELIVERY_TIMEOUT_S = 900
SUBSCRIBE_TIMEOUT_S = 300


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def error_lines(log_path: Path) -> list[str]:
    """Lines of a service log at ERROR or above (JSON lines, or tracebacks printed raw)."""
    found = []
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if line.startswith(("Traceback", "ERROR", "CRITICAL")):
                found.append(line)
            continue
        if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
            found.append(line)
    return found


async def sender_state(client: httpx.AsyncClient, sender: ServiceProcess) -> dict[str, int]:
    """A sender replica's state, from its metrics.

    The account queues it consumes (`accounts`), the consumers waiting to hand their account
    to its owner (`pending`), those handed over so far (`handovers`), and the replicas it
    sees alive (`live`).
    """
    try:
        text = (await client.get(f"{sender.url}/metrics")).text
    except httpx.HTTPError:
        return {"accounts": 0, "pending": -1, "handovers": 0, "live": 0}
    state = {"accounts": 0, "pending": 0, "handovers": 0, "live": 0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("mailfleet_sender_accounts{"):
            state["accounts"] += int(float(value))
        elif name == "mailfleet_sender_consumer_handovers_pending":
            state["pending"] = int(float(value))
        elif name == "mailfleet_sender_consumer_handovers_total":
            state["handovers"] = int(float(value))
        elif name == "mailfleet_sender_replicas_live":
            state["live"] = int(float(value))
    return state


async def settled(client: httpx.AsyncClient, senders: list[ServiceProcess], accounts: int) -> bool:
    """Whether the replicas have settled.

    Every replica sees every other, consumes every account, and has no consumer waiting to
    hand its account over.
    """
    states = [await sender_state(client, s) for s in senders]
    return all(
        s["accounts"] >= accounts and s["pending"] == 0 and s["live"] == len(senders)
        for s in states
    )


async def subscribed(client: httpx.AsyncClient, sender: ServiceProcess) -> int:
    """How many account queues a sender replica consumes."""
    return (await sender_state(client, sender))["accounts"]


async def handovers(client: httpx.AsyncClient, senders: list[ServiceProcess]) -> int:
    """Account consumers handed to their owners so far, over every replica."""
    return sum([(await sender_state(client, s))["handovers"] for s in senders])


async def create_accounts(client: httpx.AsyncClient, count: int, sink_port: int) -> list[str]:
    limit = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(i: int) -> str:
        async with limit:
            response = await client.post(
                "/api/admin/accounts",
                json={
                    "name": f"fleet{i}",
                    "smtp_host": "127.0.0.1",
                    "smtp_port": sink_port,
                    "smtp_tls": "none",
                    "smtp_username": f"fleet{i}",
                    "smtp_password": "fleet",
                    "from_email": f"fleet{i}@sender.example.com",
                    "from_name": f"Fleet {i}",
                    "daily_limit": 300,  # a small mailbox of a large fleet
                    "min_gap_ms": 0,
                },
            )
            response.raise_for_status()
            account_id: str = response.json()["id"]
            return account_id

    return await asyncio.gather(*(one(i) for i in range(count)))


async def archive_accounts(client: httpx.AsyncClient, account_ids: list[str]) -> None:
    limit = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(account_id: str) -> None:
        async with limit:
            response = await client.delete(f"/api/admin/accounts/{account_id}")
            response.raise_for_status()

    await asyncio.gather(*(one(a) for a in account_ids))


def metric_values(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """The unlabelled samples called `names` in a Prometheus text page."""
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            values[name] = float(value)
    return values


class DispatcherWatch:
    """Samples the dispatcher's counters: when it published its last command, its ticks."""

    NAMES = (
        "mailfleet_dispatcher_send_batches_published_total",
        "mailfleet_dispatcher_tick_seconds_sum",
        "mailfleet_dispatcher_tick_seconds_count",
    )

    def __init__(self, dispatcher: ServiceProcess, started: float) -> None:
        self._dispatcher = dispatcher
        self._started = started
        self.published = 0.0
        self.last_publish_s = 0.0
        self.values: dict[str, float] = {}
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    page = await client.get(f"{self._dispatcher.url}/metrics")
                except httpx.HTTPError:
                    page = None
                if page is not None:
                    self.values = metric_values(page.text, self.NAMES)
                    published = self.values.get(self.NAMES[0], 0.0)
                    if published > self.published:
                        self.published = published
                        self.last_publish_s = time.time() - self._started
                await asyncio.sleep(0.1)

    async def stop(self) -> dict[str, float]:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        ticks = self.values.get(self.NAMES[2], 0.0)
        return {
            "commands_published": self.published,
            "last_publish_s": round(self.last_publish_s, 2),
            "ticks": ticks,
            "tick_s_mean": round(self.values.get(self.NAMES[1], 0.0) / ticks, 4) if ticks else 0,
        }


class PeakRss:
    """Samples the senders' resident memory until stopped; keeps each one's peak."""

    def __init__(self, senders: list[ServiceProcess]) -> None:
        self._senders = senders
        self.peak: dict[str, float] = {s.name: 0.0 for s in senders}
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            for sender in self._senders:
                self.peak[sender.name] = max(self.peak[sender.name], rss_mb(sender.pid))
            await asyncio.sleep(0.25)

    async def stop(self) -> float:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return max(self.peak.values())


async def run_size(accounts: int, messages: int, senders: int, archive: bool) -> dict[str, Any]:
    async with (
        Scratch() as scratch,
        Stack(
            postgres_dsn=scratch.dsn,
            rabbit_url=scratch.rabbit_url,
            crypto_keys=generate_key(),
            env={"MAILFLEET_LOG_LEVEL": "WARNING"},
        ) as stack,
    ):
        sink = await stack.start_sink()
        await stack.start_api()
        dispatcher = await stack.start_dispatcher()
        async with aclosing(await stack.admin_client()) as client:
            client.timeout = 120.0
            started = time.perf_counter()
            account_ids = await create_accounts(client, accounts, sink.port)
            create_s = time.perf_counter() - started

            started = time.perf_counter()
            replicas = [
                await stack.start_sender(ready_within_s=SUBSCRIBE_TIMEOUT_S) for _ in range(senders)
            ]
            rss = PeakRss(replicas)
            # Until every replica consumes every account and each account's consumer line
            # starts with its owner: the replica started first was the active consumer of all.
            while not await settled(client, replicas, accounts):
                if time.perf_counter() - started > SUBSCRIBE_TIMEOUT_S:
                    raise RuntimeError("the senders did not subscribe every account in time")
                await asyncio.sleep(0.1)
            subscribe_s = time.perf_counter() - started
            rss_subscribed = max(rss_mb(s.pid) for s in replicas)

            response = await client.post(
                "/api/campaigns",
                json={
                    "name": "fleet",
                    "subject": content.SUBJECT,
                    "html_body": content.HTML,
                    "text_body": content.TEXT,
                    "account_ids": [],  # every account
                },
            )
            response.raise_for_status()
            campaign_id = response.json()["id"]
            response = await client.post(
                "/api/queue/enqueue",
                content=json.dumps(
                    {"campaign_id": campaign_id, "recipients": content.recipients(messages)}
                ).encode(),
                headers={"content-type": "application/json"},
            )
            response.raise_for_status()
            assert response.json()["accepted"] == messages, response.text[:500]

            handovers_before = await handovers(client, replicas)
            groups = {service.name: [service.pid] for service in stack.services if service.pid}
            groups.update(server_pids())
            cpu_before = {g: sum(cpu_seconds(p) for p in pids) for g, pids in groups.items()}
            start_wall = time.time()
            watch = DispatcherWatch(dispatcher, start_wall)
            response = await client.post(f"/api/campaigns/{campaign_id}/start", json={})
            response.raise_for_status()
            db = await asyncpg.connect(scratch.dsn)
            try:
                deadline = time.monotonic() + DELIVERY_TIMEOUT_S
                while time.monotonic() < deadline:
                    done = await db.fetchval(
                        "SELECT count(*) FROM messages WHERE status IN ('sent', 'failed', "
                        "'uncertain', 'cancelled')"
                    )
                    if done >= messages:
                        break
                    await asyncio.sleep(0.2)
                cpu_after = {g: sum(cpu_seconds(p) for p in pids) for g, pids in groups.items()}
                # When the dispatcher had handed out the last message (the sending ends later).
                assigned_s = await db.fetchval(
                    "SELECT extract(epoch FROM max(assigned_at)) - $1 FROM messages", start_wall
                )
                statuses = {
                    row["status"]: row["count"]
                    for row in await db.fetch(
                        "SELECT status, count(*) FROM messages GROUP BY status"
                    )
                }
                expected = {
                    row["message_id"]
                    for row in await db.fetch("SELECT message_id FROM messages")
                    if row["message_id"] is not None
                }
                used = await db.fetchval(
                    "SELECT count(DISTINCT account_id) FROM messages WHERE status = 'sent'"
                )
                unsent = await db.fetchval("SELECT count(*) FROM messages WHERE message_id IS NULL")
            finally:
                await db.close()
            handovers_during = await handovers(client, replicas) - handovers_before
            peak_rss = await rss.stop()
            dispatch = await watch.stop()
            archived: dict[str, float] = {}
            if archive:
                # Every account archived through the API: the senders must let go of them.
                started = time.perf_counter()
                await archive_accounts(client, account_ids)
                while max([await subscribed(client, s) for s in replicas]) > 0:
                    if time.perf_counter() - started > SUBSCRIBE_TIMEOUT_S:
                        raise RuntimeError("the senders did not let go of archived accounts")
                    await asyncio.sleep(0.2)
                archived["unsubscribe_s"] = round(time.perf_counter() - started, 2)
                await asyncio.sleep(2.0)
                archived["sender_rss_mb"] = round(max(rss_mb(s.pid) for s in replicas), 1)
        await asyncio.sleep(1.0)  # the sink writes its records twice a second
        records = sink.records()
        last = max((r["at"] for r in records), default=start_wall)
        deliver_s = last - start_wall
        arrived = [r["message_id"] for r in records]
        duplicates = len(arrived) - len(set(arrived))
        lost = len(expected - set(arrived)) + unsent
        for service in reversed(stack.services):
            await service.stop()
        errors = [line for s in stack.services for line in error_lines(s.log_path)]

    return {
        "accounts": accounts,
        "accounts_used": used,
        "create_accounts_s": round(create_s, 2),
        "subscribe_s": round(subscribe_s, 2),
        "deliver_s": round(deliver_s, 3),
        "emails_per_s": round(len(set(arrived)) / deliver_s, 1) if deliver_s > 0 else 0.0,
        "last_assigned_s": round(float(assigned_s or 0), 3),
        "handovers_during_delivery": handovers_during,
        "dispatcher": dispatch,
        "archived": archived,
        "cpu_us_per_email": {
            g: round((cpu_after[g] - cpu_before[g]) * 1e6 / max(len(arrived), 1))
            for g in cpu_before
        },
        "sender_rss_mb_subscribed": round(rss_subscribed, 1),
        "sender_rss_mb_peak": round(peak_rss, 1),
        "duplicates": duplicates,
        "lost": lost,
        "statuses": statuses,
        "error_log_lines": len(errors),
        "errors_sample": errors[:5],
    }


async def run(sizes: list[int], messages: int, senders: int) -> dict[str, Any]:
    runs = [await run_size(size, messages, senders, size == max(sizes)) for size in sizes]
    by_size = {r["accounts"]: r for r in runs}
    result: dict[str, Any] = {f"emails_per_s_{r['accounts']}": r["emails_per_s"] for r in runs}
    base = by_size.get(50, runs[0])["emails_per_s"]
    for size in sizes:
        if size != 50 and base:
            result[f"ratio_{size}"] = round(by_size[size]["emails_per_s"] / base, 3)
    largest = by_size[max(sizes)]
    result[f"sender_rss_mb_{largest['accounts']}"] = largest["sender_rss_mb_peak"]
    result[f"subscribe_s_{largest['accounts']}"] = largest["subscribe_s"]
    result[f"sender_rss_mb_{largest['accounts']}_archived"] = largest["archived"]["sender_rss_mb"]
    result["duplicates"] = sum(r["duplicates"] for r in runs)
    result["lost"] = sum(r["lost"] for r in runs)
    result["error_log_lines"] = sum(r["error_log_lines"] for r in runs)
    result["messages"] = messages
    result["senders"] = senders
    result["runs"] = runs
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--sizes", default="50,1000,10000", help="account counts, comma-separated")
    parser.add_argument("--senders", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    result = uvloop.run(run(sizes, args.messages, args.senders))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
