"""Transactional latency under load: sends made while a 100,000-message campaign drains.

Runs the real processes (api, dispatcher, sender replicas) against a capture SMTP server.
Enqueues a campaign of --backlog recipients over --accounts accounts (tagged `bench`), starts
it, and once it is draining sends --sends transactional messages through the same accounts
(`"pool": "bench"`), one request each, every --interval-ms, each with a 2 kB attachment. Each
latency runs from the API's 202 (as the client sees it) to the capture server's acceptance
of that message. Prints one JSON line: p50/p95/p99/max ms, the campaign's throughput during
the sends and its backlog left at the end, duplicates and lost among the transactional sends.

    uv run python -m bench.transactional [--backlog 100000] [--accounts 10] [--sends 300]
                                         [--interval-ms 50] [--senders 2]
"""

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from contextlib import aclosing

import asyncpg
import uvloop
from mailfleet_common.crypto import generate_key

from bench import content
from bench.scratch import Scratch
from tests.stack import Stack

_ENQUEUE_CHUNK = 10_000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _pair(values: list[float]) -> list[float] | None:
    if not values:
        return None
    return [round(statistics.median(values), 1), round(_percentile(values, 0.99), 1)]


async def run(
    backlog: int, accounts: int, sends: int, interval_ms: float, senders: int
) -> dict[str, object]:
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
        await stack.start_dispatcher()
        for _ in range(senders):
            await stack.start_sender()
        async with aclosing(await stack.admin_client()) as client:
            client.timeout = 120.0
            for i in range(accounts):
                response = await client.post(
                    "/api/admin/accounts",
                    json={
                        "name": f"bench{i}",
                        "smtp_host": "127.0.0.1",
                        "smtp_port": sink.port,
                        "smtp_tls": "none",
                        "from_email": f"bench{i}@sender.example.com",
                        "daily_limit": 10_000_000,
                        "min_gap_ms": 0,
                        "tags": ["bench"],
                    },
                )
                response.raise_for_status()
            response = await client.post(
                "/api/campaigns",
                json={
                    "name": "backlog",
                    "subject": content.SUBJECT,
                    "html_body": content.HTML,
                    "text_body": content.TEXT,
                    "pools": ["bench"],
                },
            )
            response.raise_for_status()
            campaign_id = response.json()["id"]
            await asyncio.sleep(3.0)  # every sender replica subscribes to the accounts
            everyone = content.recipients(backlog)
            for start in range(0, backlog, _ENQUEUE_CHUNK):
                payload = {
                    "campaign_id": campaign_id,
                    "recipients": everyone[start : start + _ENQUEUE_CHUNK],
                }
                (await client.post("/api/queue/enqueue", json=payload)).raise_for_status()
            (await client.post(f"/api/campaigns/{campaign_id}/start", json={})).raise_for_status()
            await asyncio.sleep(3.0)  # draining at full speed

            attachment = {
                "filename": "receipt.txt",
                "content_type": "text/plain",
                "content": base64.b64encode(b"r" * 2048).decode(),
            }
            accepted_at: dict[str, float] = {}

            async def send(i: int) -> None:
                to = f"txn{i}@receipts.example.com"
                body = {
                    "pool": "bench",
                    "subject": "Receipt {{ n }}",
                    "text_body": "Thank you, {{ name }}. Receipt {{ n }} is attached.",
                    "messages": [
                        {"to": to, "name": f"T {i}", "variables": {"n": i},
                         "attachments": [attachment]}
                    ],
                }  # fmt: skip
                response = await client.post("/api/messages", json=body)
                accepted_at[to] = time.time()
                response.raise_for_status()

            window_start = time.time()
            tasks = []
            for i in range(sends):
                tasks.append(asyncio.create_task(send(i)))
                await asyncio.sleep(interval_ms / 1000)
            await asyncio.gather(*tasks)
            deadline = time.monotonic() + 60
            arrived: dict[str, list[float]] = {}
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                arrived = {}
                for record in sink.records():
                    for rcpt in record["recipients"]:
                        if rcpt.startswith("txn"):
                            arrived.setdefault(rcpt, []).append(record["at"])
                if len(arrived) >= sends:
                    break
            window_end = max((min(at) for at in arrived.values()), default=time.time())
            records = sink.records()
            db = await asyncpg.connect(scratch.dsn)
            try:
                left = await db.fetchval(
                    "SELECT count(*) FROM messages WHERE campaign_id = $1"
                    " AND status IN ('queued', 'assigned', 'sending', 'deferred')",
                    campaign_id,
                )
                # Where the time goes: stored -> assigned (dispatcher) -> outcome recorded.
                stages = await db.fetch(
                    """
                    SELECT extract(epoch FROM assigned_at - created_at) * 1000 AS assign_ms,
                           extract(epoch FROM sent_at - assigned_at) * 1000 AS send_ms
                    FROM messages WHERE transactional AND sent_at IS NOT NULL
                    """
                )
            finally:
                await db.close()
    latencies = [
        (min(arrived[to]) - accepted) * 1000
        for to, accepted in accepted_at.items()
        if to in arrived
    ]
    campaign_in_window = sum(
        1
        for r in records
        if window_start <= r["at"] <= window_end
        and not any(rcpt.startswith("txn") for rcpt in r["recipients"])
    )
    return {
        "backlog": backlog,
        "accounts": accounts,
        "senders": senders,
        "sends": sends,
        "interval_ms": interval_ms,
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(_percentile(latencies, 0.95), 1) if latencies else None,
        "p99_ms": round(_percentile(latencies, 0.99), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "assign_ms_p50_p99": _pair([float(r["assign_ms"]) for r in stages]),
        "assigned_to_recorded_ms_p50_p99": _pair([float(r["send_ms"]) for r in stages]),
        # The slowest message's stages: which side held it.
        "slowest_assign_send_ms": max(
            ([round(float(r["assign_ms"]), 1), round(float(r["send_ms"]), 1)] for r in stages),
            key=sum,
            default=None,
        ),
        "campaign_per_s_during": round(campaign_in_window / max(window_end - window_start, 1e-9)),
        "campaign_left_at_end": left,
        "duplicates": sum(len(at) - 1 for at in arrived.values()),
        "lost": sends - len(arrived),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--sends", type=int, default=300)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    parser.add_argument("--senders", type=int, default=2)
    args = parser.parse_args()
    result = uvloop.run(
        run(args.backlog, args.accounts, args.sends, args.interval_ms, args.senders)
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
