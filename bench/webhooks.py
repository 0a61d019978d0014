"""Webhook events delivered per second to a local receiver.

    uv run python -m bench.webhooks [--events 20000] [--endpoints 4] [--replicas 1]

In a throwaway database: `endpoints` endpoints (every event type) on one local receiver
process (bench/webhook_receiver.py, which verifies every signature), `replicas` webhook
workers with their default settings. Then `events` events are inserted in batches of 1,000
(the outbox trigger adds one delivery per endpoint), and the run is timed until every
delivery is recorded delivered. Also timed: the same inserts with no endpoint (the
trigger's cost when nothing listens) and with the endpoints but no worker running (the
cost of writing the outbox rows).

Prints one JSON line: deliveries, deliveries_per_s (from the first insert to the last one
recorded delivered), events_per_s (deliveries_per_s / endpoints), received and bad (as the
receiver counted them), worker_cpu_s, and insert_ms_per_1000_events with no endpoint and
with the outbox.
"""

import argparse
import asyncio
import base64
import json
import secrets
import sys
import time
from typing import Any

import asyncpg
import httpx
from mailfleet_common.crypto import SecretBox, generate_key

from bench.scratch import RABBIT_URL, Scratch, cpu_seconds
from tests.stack import ServiceProcess, Stack, free_port

_BATCH = 1000
_TYPES = ["sent", "opened", "clicked", "deferred", "bounced"]


async def _insert(db: Any, events: int) -> float:
    """Insert the events in batches of 1,000; returns the seconds it took."""
    started = time.perf_counter()
    for start in range(0, events, _BATCH):
        await db.execute(
            """
            INSERT INTO events (occurred_at, type, data)
            SELECT now(), ($1::text[])[1 + g % 5], jsonb_build_object('n', g)
            FROM generate_series($2::int, $3::int) AS g
            """,
            _TYPES,
            start,
            min(events, start + _BATCH) - 1,
        )
    return time.perf_counter() - started


async def _all_delivered(db: Any, expected: int) -> None:
    delivered = "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'"
    while await db.fetchval(delivered) < expected:  # noqa: ASYNC110 - polling the database
        await asyncio.sleep(0.05)


async def run(events: int, endpoints: int, replicas: int) -> dict[str, Any]:
    crypto_keys = generate_key()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    async with (
        Scratch(broker=False) as scratch,
        Stack(
            postgres_dsn=scratch.dsn,
            rabbit_url=RABBIT_URL,
            crypto_keys=crypto_keys,
            # The receiver runs on this machine.
            env={
                "MAILFLEET_LOG_LEVEL": "WARNING",
                "MAILFLEET_WEBHOOKS__ALLOW_PRIVATE_DESTINATIONS": "true",
            },
        ) as stack,
    ):
        port = free_port()
        receiver = ServiceProcess(
            "receiver",
            [
                sys.executable,
                "-m",
                "bench.webhook_receiver",
                "--port",
                str(port),
                "--secret",
                secret,
            ],
            env=stack.env,
            port=port,
            log_path=stack.workdir / "receiver.log",
            ready_path="/count",
        )
        stack.services.append(receiver)
        await receiver.start()
        db = await asyncpg.connect(scratch.dsn)
        try:
            bare_s = await _insert(db, events)
            await db.execute("TRUNCATE events")
            owner = await db.fetchval(
                "INSERT INTO users (email, password_hash, role) VALUES ('b@example.com', 'x',"
                " 'admin') RETURNING id"
            )
            box = SecretBox([crypto_keys])
            for n in range(endpoints):
                await db.execute(
                    "INSERT INTO webhook_endpoints (owner_id, url, event_types, secret_enc)"
                    " VALUES ($1, $2, $3, $4)",
                    owner,
                    f"{receiver.url}/hook/{n}",
                    [f"message.{t}" for t in _TYPES],
                    box.encrypt(secret),
                )
            outbox_s = await _insert(db, events)  # no worker yet: the outbox fills
            await db.execute("TRUNCATE webhook_deliveries CASCADE")
            await db.execute("TRUNCATE events")
            workers = [await stack.start_webhooks() for _ in range(replicas)]
            cpu_before = sum(cpu_seconds(w.pid) for w in workers)
            started = time.perf_counter()
            await _insert(db, events)
            expected = events * endpoints
            await _all_delivered(db, expected)
            elapsed = time.perf_counter() - started
            worker_cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu_before
        finally:
            await db.close()
        async with httpx.AsyncClient() as client:
            counts = (await client.get(f"{receiver.url}/count")).json()
    per_s = expected / elapsed
    return {
        "events": events,
        "endpoints": endpoints,
        "replicas": replicas,
        "deliveries": expected,
        "seconds": round(elapsed, 2),
        "deliveries_per_s": round(per_s),
        "events_per_s": round(per_s / endpoints),
        "received": counts["received"],
        "bad": counts["bad"],
        "worker_cpu_s": round(worker_cpu, 2),
        "insert_ms_per_1000_events_no_endpoint": round(bare_s * 1000 / (events / _BATCH), 1),
        "insert_ms_per_1000_events_with_outbox": round(outbox_s * 1000 / (events / _BATCH), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--endpoints", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.events, args.endpoints, args.replicas))))


if __name__ == "__main__":
    main()
