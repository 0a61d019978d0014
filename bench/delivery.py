"""End-to-end delivery benchmark: 10,000 personalized recipients through 50 accounts.

Runs the real processes (api, dispatcher, sender replicas) against a capture SMTP server,
enqueues every recipient in one API call, starts the campaign and waits until the server has
every message. Then, in the same run and against the same server, measures the raw ceiling:
aiosmtplib alone sending as many pre-built messages at its best concurrency, before and after
the pipeline (their mean is the ceiling). Prints one JSON
line: enqueue_s, deliver_s, emails_per_s, ceiling_per_s, ratio, duplicates, lost.

    uv run python -m bench.delivery [--recipients 10000] [--accounts 50] [--senders 2]
                                    [--connections 1] [--no-tracking]

The campaign tracks opens and clicks, as campaigns do by default: each message is parsed and
its links rewritten and signed. --no-tracking measures a campaign with tracking switched off.

Two sender replicas by default: senders scale out, and this machine has two cores.
"""

import argparse
import asyncio
import json
import sys
import time
from contextlib import aclosing

import asyncpg
import uvloop
from mailfleet_common.crypto import generate_key

from bench import ceiling, content
from bench.scratch import Scratch, cpu_seconds, server_pids
from tests.stack import Stack


async def run(
    recipients: int, accounts: int, senders: int, connections: int, tracking: bool
) -> dict[str, object]:
    async with (
        Scratch() as scratch,
        Stack(
            postgres_dsn=scratch.dsn,
            rabbit_url=scratch.rabbit_url,
            crypto_keys=generate_key(),
            env={
                "MAILFLEET_LOG_LEVEL": "WARNING",
                "MAILFLEET_SENDER__MAX_CONNECTIONS_PER_ACCOUNT": str(connections),
            },
        ) as stack,
    ):
        sink = await stack.start_sink()
        # The ceiling runs against its own instance of the same server, before the pipeline
        # and again after it; their mean evens out drift on a shared machine.
        ceiling_sink = await stack.start_sink()
        prebuilt = content.prebuilt_messages(recipients)
        ceiling_before, _ = await ceiling.best_rate("127.0.0.1", ceiling_sink.port, prebuilt)
        await stack.start_api()
        await stack.start_dispatcher()
        for _ in range(senders):
            await stack.start_sender()

        async with aclosing(await stack.admin_client()) as client:
            client.timeout = 120.0
            account_ids = []
            for i in range(accounts):
                response = await client.post(
                    "/api/admin/accounts",
                    json={
                        "name": f"bench{i}",
                        "smtp_host": "127.0.0.1",
                        "smtp_port": sink.port,
                        "smtp_tls": "none",
                        "smtp_username": f"bench{i}",
                        "smtp_password": "bench",
                        "from_email": f"bench{i}@sender.example.com",
                        "from_name": f"Bench {i}",
                        "daily_limit": 10_000_000,  # limits lifted for the run
                        "min_gap_ms": 0,
                    },
                )
                response.raise_for_status()
                account_ids.append(response.json()["id"])
            response = await client.post(
                "/api/campaigns",
                json={
                    "name": "bench",
                    "subject": content.SUBJECT,
                    "html_body": content.HTML,
                    "text_body": content.TEXT,
                    "account_ids": account_ids,
                    "tracking": tracking,
                },
            )
            response.raise_for_status()
            campaign_id = response.json()["id"]
            # Let every sender replica subscribe to the new accounts' queues first.
            await asyncio.sleep(3.0)

            payload = json.dumps(
                {"campaign_id": campaign_id, "recipients": content.recipients(recipients)}
            ).encode()
            started = time.perf_counter()
            response = await client.post(
                "/api/queue/enqueue",
                content=payload,
                headers={"content-type": "application/json"},
            )
            enqueue_s = time.perf_counter() - started
            response.raise_for_status()
            assert response.json()["accepted"] == recipients, response.text[:500]

            groups = {service.name: [service.pid] for service in stack.services if service.pid}
            groups.update(server_pids())
            cpu_before = {g: sum(cpu_seconds(p) for p in pids) for g, pids in groups.items()}
            start_wall = time.time()
            response = await client.post(f"/api/campaigns/{campaign_id}/start", json={})
            response.raise_for_status()

            db = await asyncpg.connect(scratch.dsn)
            try:
                deadline = time.monotonic() + 600
                while True:
                    done = await db.fetchval(
                        "SELECT count(*) FROM messages WHERE status IN ('sent', 'failed', "
                        "'uncertain', 'cancelled')"
                    )
                    if done >= recipients or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                statuses = dict(
                    await db.fetch("SELECT status, count(*) FROM messages GROUP BY status")
                )
                cpu_after = {g: sum(cpu_seconds(p) for p in pids) for g, pids in groups.items()}
            finally:
                await db.close()
        await asyncio.sleep(1.0)  # the sink writes its records twice a second
        records = sink.records()
        last = max((r["at"] for r in records), default=start_wall)
        deliver_s = last - start_wall
        first_s = min((r["at"] for r in records), default=start_wall) - start_wall
        cpu_us_per_email = {
            g: round((cpu_after[g] - cpu_before[g]) * 1e6 / max(len(records), 1)) for g in groups
        }
        message_ids = [r["message_id"] for r in records]
        delivered = {rcpt for r in records for rcpt in r["recipients"]}
        duplicates = len(message_ids) - len(set(message_ids))
        lost = recipients - len(delivered)

        # The ceiling again, with the services stopped.
        for service in stack.services:
            if service not in (sink, ceiling_sink):
                await service.stop()
        ceiling_after, best_concurrency = await ceiling.best_rate(
            "127.0.0.1", ceiling_sink.port, prebuilt
        )
        ceiling_per_s = (ceiling_before + ceiling_after) / 2

    emails_per_s = len(delivered) / deliver_s if deliver_s > 0 else 0.0
    return {
        "recipients": recipients,
        "accounts": accounts,
        "senders": senders,
        "connections_per_account": connections,
        "tracking": tracking,
        "enqueue_s": round(enqueue_s, 3),
        "deliver_s": round(deliver_s, 3),
        "first_delivery_s": round(first_s, 3),
        "emails_per_s": round(emails_per_s, 1),
        "ceiling_per_s": round(ceiling_per_s, 1),
        "ceiling_before_per_s": round(ceiling_before, 1),
        "ceiling_after_per_s": round(ceiling_after, 1),
        "ceiling_concurrency": best_concurrency,
        "ratio": round(emails_per_s / ceiling_per_s, 3),
        "duplicates": duplicates,
        "lost": lost,
        "statuses": statuses,
        "cpu_us_per_email": cpu_us_per_email,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--connections", type=int, default=1, help="SMTP sessions per account")
    parser.add_argument(
        "--no-tracking",
        dest="tracking",
        action="store_false",
        help="campaign without click and open tracking (the unsubscribe link and headers stay)",
    )
    args = parser.parse_args()
    result = uvloop.run(
        run(args.recipients, args.accounts, args.senders, args.connections, args.tracking)
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
