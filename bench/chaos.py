"""Chaos run: a campaign delivered while processes are killed and servers restarted.

Runs the real processes (api, dispatcher, sender replicas, a capture SMTP server that answers
a share of messages 451 after DATA) over a private PostgreSQL cluster and a private RabbitMQ
node (tests/private_servers.py), so that restarting them harms nobody else. While the
campaign is being delivered, faults are injected one after another on a fixed schedule:
SIGKILL of a sender replica, of the dispatcher or of the API (each restarted after
`--restart-delay`), RabbitMQ `stop_app`/`start_app`, PostgreSQL `pg_ctl restart -m fast`.
Prints one JSON line:

- duplicates: Message-IDs the SMTP server accepted more than once;
- lost: messages that neither reached the server nor ended `failed`/`uncertain`/`cancelled`,
  or are `sent` without having reached it;
- uncertain, uncertain_delivered: messages left `uncertain`, and how many of those did arrive;
- in_flight_at_kills: the messages each killed sender had in an SMTP conversation (`sending`
  under its replica id right after the kill): what may become `uncertain`;
- max_stall_s: per fault kind, the longest gap in arrivals at the SMTP server from the fault's
  start until the next fault (the first gap counted from the fault's start);
- finished_s: from the campaign's start to the last arrival.

    uv run python -m bench.chaos [--messages 20000] [--accounts 20] [--senders 2]
        [--defer-rate 0.02] [--min-gap-ms 40] [--first-fault-s 4] [--fault-every-s 5]
        [--faults sender_kill,dispatcher_kill,...]
"""

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvloop
from mailfleet_common.crypto import generate_key

from tests.private_servers import PrivatePostgres, PrivateRabbit
from tests.stack import ServiceProcess, Sink, Stack

FAULT_KINDS = ("sender_kill", "dispatcher_kill", "api_kill", "broker_restart", "postgres_restart")
DEFAULT_FAULTS = (
    "sender_kill",
    "dispatcher_kill",
    "sender_kill",
    "broker_restart",
    "api_kill",
    "postgres_restart",
    "sender_kill",
)
FINAL = ("sent", "failed", "uncertain", "cancelled")

# Product defaults, except retries: a message answered 451 comes back within seconds rather
# than a minute, so the run ends in minutes.
CHAOS_ENV = {
    "MAILFLEET_LOG_LEVEL": "INFO",
    "MAILFLEET_SENDER__RETRY_BASE_S": "0.5",
    "MAILFLEET_SENDER__RETRY_CAP_S": "2",
    "MAILFLEET_SENDER__MAX_ATTEMPTS": "8",
    "MAILFLEET_SENDER__SMTP_TIMEOUT_S": "10",
}


@dataclass
class Options:
    messages: int = 20_000
    accounts: int = 20
    senders: int = 2
    defer_rate: float = 0.02
    min_gap_ms: int = 40
    first_fault_s: float = 4.0
    fault_every_s: float = 5.0
    restart_delay_s: float = 0.5
    postgres_down_s: float = 2.0
    faults: Sequence[str] = DEFAULT_FAULTS
    settle_within_s: float = 300.0


@dataclass
class Fault:
    kind: str
    at: float  # Unix time the fault started
    in_flight: int = 0  # a killed sender's messages in an SMTP conversation
    recovered_s: float = 0.0  # how long the fault itself took (restart included)


@dataclass
class Run:
    stack: Stack
    sink: Sink
    postgres: PrivatePostgres
    rabbit: PrivateRabbit
    dsn: str
    senders: list[ServiceProcess]
    faults: list[Fault] = field(default_factory=list)
    kills: int = 0


async def _setup_campaign(client: httpx.AsyncClient, sink: Sink, options: Options) -> str:
    account_ids = []
    for i in range(options.accounts):
        response = await client.post(
            "/api/admin/accounts",
            json={
                "name": f"chaos{i}",
                "smtp_host": "127.0.0.1",
                "smtp_port": sink.port,
                "smtp_tls": "none",
                "smtp_username": f"chaos{i}",
                "smtp_password": "chaos",
                "from_email": f"chaos{i}@sender.example.com",
                "daily_limit": 10_000_000,
                "min_gap_ms": options.min_gap_ms,
            },
        )
        response.raise_for_status()
        account_ids.append(response.json()["id"])
    response = await client.post(
        "/api/campaigns",
        json={
            "name": "chaos",
            "subject": "Hello {{ name }}",
            "html_body": "<p>Hi {{ name }}, <a href='https://example.com/x'>a link</a></p>",
            "text_body": "Hi {{ name }}.",
            "account_ids": account_ids,
        },
    )
    response.raise_for_status()
    campaign_id: str = response.json()["id"]
    for start in range(0, options.messages, 10_000):
        recipients = [
            {"email": f"person{i}@example.org", "name": f"Person {i}"}
            for i in range(start, min(start + 10_000, options.messages))
        ]
        response = await client.post(
            "/api/queue/enqueue",
            json={"campaign_id": campaign_id, "recipients": recipients},
            timeout=120,
        )
        response.raise_for_status()
        assert response.json()["accepted"] == len(recipients), response.text[:300]
    return campaign_id


async def _restart(service: ServiceProcess, delay_s: float) -> None:
    await service.kill(signal.SIGKILL)
    await asyncio.sleep(delay_s)
    await service.start()


def _replica_id(sender: ServiceProcess) -> str:
    """The id the sender process last logged when it started (its current life's)."""
    found = ""
    for line in sender.log_path.read_text(errors="replace").splitlines():
        if '"sender replica started"' in line:
            found = str(json.loads(line)["replica"])
    if not found:
        raise RuntimeError(f"{sender.name} logged no replica id (MAILFLEET_LOG_LEVEL=INFO?)")
    return found


async def _kill_sender(run: Run, options: Options) -> int:
    """SIGKILL a sender and restart it; returns the messages it had in an SMTP conversation.

    Counted right after the kill: the dead process changes nothing any more, and its
    `sending` messages stay so until the dispatcher finds its heartbeat too old.
    """
    sender = run.senders[run.kills % len(run.senders)]
    run.kills += 1
    replica = _replica_id(sender)
    await sender.kill(signal.SIGKILL)
    db = await asyncpg.connect(run.dsn)
    try:
        in_flight: int = await db.fetchval(
            "SELECT count(*) FROM messages WHERE status = 'sending' AND sender_replica = $1",
            replica,
        )
    finally:
        await db.close()
    await asyncio.sleep(options.restart_delay_s)
    await sender.start()
    return in_flight


async def _inject(run: Run, kind: str, options: Options) -> Fault:
    fault = Fault(kind, time.time())
    started = time.monotonic()
    if kind == "sender_kill":
        fault.in_flight = await _kill_sender(run, options)
    elif kind == "dispatcher_kill":
        dispatcher = next(s for s in run.stack.services if s.name == "dispatcher")
        await _restart(dispatcher, options.restart_delay_s)
    elif kind == "api_kill":
        assert run.stack.api is not None
        await _restart(run.stack.api, options.restart_delay_s)
    elif kind == "broker_restart":
        await run.rabbit.restart_app()
    elif kind == "postgres_restart":
        await run.postgres.restart(options.postgres_down_s)
    else:
        raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")
    fault.recovered_s = time.monotonic() - started
    return fault


def stall_after(arrivals: Sequence[float], start: float, end: float) -> float:
    """The longest gap in `arrivals` (sorted Unix times) that begins between `start` and `end`.

    The fault's start counts as an arrival, so the first gap runs from it to the first
    arrival after it; a gap that begins before `end` counts whole, even if it ends after.
    With no arrival after `start` at all, the stall lasts to `end`.
    """
    previous = start
    longest = 0.0
    for at in arrivals:
        if at < start:
            continue
        longest = max(longest, at - previous)
        previous = at
        if previous >= end:
            return longest
    return max(longest, end - previous)


async def _wait_settled(dsn: str, total: int, within_s: float) -> dict[str, int]:
    db = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + within_s
        while True:
            rows = await db.fetch("SELECT status, count(*) FROM messages GROUP BY status")
            statuses = {str(r["status"]): int(r["count"]) for r in rows}
            if sum(statuses.get(s, 0) for s in FINAL) >= total or time.monotonic() > deadline:
                return statuses
            await asyncio.sleep(0.5)
    finally:
        await db.close()


def _error_lines(stack: Stack) -> int:
    """ERROR and CRITICAL log lines of the mailfleet services (the sink logs no JSON)."""
    count = 0
    for service in stack.services:
        for line in service.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    count += json.loads(line).get("level") in ("ERROR", "CRITICAL")
    return count


async def run_chaos(options: Options) -> dict[str, Any]:
    """One chaos run as the options say; returns the report (see the module's docstring)."""
    for kind in options.faults:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")
    async with PrivatePostgres() as postgres, PrivateRabbit() as rabbit:
        dsn = await postgres.create_database("mailfleet")
        workdir = Path(tempfile.mkdtemp(prefix="mailfleet-chaos-"))
        async with Stack(
            postgres_dsn=dsn,
            rabbit_url=rabbit.url,
            crypto_keys=generate_key(),
            env=CHAOS_ENV,
            workdir=workdir,
        ) as stack:
            sink = await stack.start_sink(defer_rate=options.defer_rate)
            await stack.start_api()
            await stack.start_dispatcher()
            senders = [await stack.start_sender() for _ in range(options.senders)]
            run = Run(stack, sink, postgres, rabbit, dsn, senders)
            async with aclosing(
                await stack.admin_client(password=secrets.token_urlsafe(18))
            ) as client:
                client.timeout = 60.0
                campaign_id = await _setup_campaign(client, sink, options)
                await asyncio.sleep(2.5)  # every sender replica subscribes to the new queues
                started = time.time()
                response = await client.post(f"/api/campaigns/{campaign_id}/start", json={})
                response.raise_for_status()
            for i, kind in enumerate(options.faults):
                due = started + options.first_fault_s + i * options.fault_every_s
                await asyncio.sleep(max(0.0, due - time.time()))
                run.faults.append(await _inject(run, kind, options))
            statuses = await _wait_settled(dsn, options.messages, options.settle_within_s)
            await asyncio.sleep(1.5)  # the sink writes its records twice a second
            report = await _report(run, options, started, statuses)
    return report


async def _report(
    run: Run, options: Options, started: float, statuses: dict[str, int]
) -> dict[str, Any]:
    records = run.sink.records()
    arrivals = sorted(r["at"] for r in records)
    delivered = Counter(r["message_id"] for r in records)
    db = await asyncpg.connect(run.dsn)
    try:
        rows = await db.fetch("SELECT status, message_id FROM messages")
    finally:
        await db.close()
    uncertain = [r["message_id"] for r in rows if r["status"] == "uncertain"]
    lost = sum(
        1
        for r in rows
        if (r["status"] == "sent" and r["message_id"] not in delivered)
        or (r["status"] not in FINAL and r["message_id"] not in delivered)
    )
    stalls: dict[str, float] = {}
    # Each fault's window ends where the next begins; the last one's at the last arrival.
    ends = [f.at for f in run.faults[1:]]
    if run.faults:
        ends.append(max(arrivals, default=started))
    for fault, end in zip(run.faults, ends, strict=True):
        stall = stall_after(arrivals, fault.at, max(end, fault.at))
        stalls[fault.kind] = round(max(stalls.get(fault.kind, 0.0), stall), 3)
    in_flight = [f.in_flight for f in run.faults if f.kind == "sender_kill"]
    return {
        "messages": options.messages,
        "accounts": options.accounts,
        "senders": options.senders,
        "defer_rate": options.defer_rate,
        "duplicates": sum(n - 1 for n in delivered.values() if n > 1),
        "lost": lost,
        "uncertain": len(uncertain),
        "uncertain_delivered": sum(1 for m in uncertain if m in delivered),
        # Delivered but still `sending`: an outcome the database never got.
        "sending_left": sum(1 for r in rows if r["status"] == "sending"),
        "in_flight_at_kills": in_flight,
        "max_stall_s": stalls,
        "finished_s": round(max(arrivals, default=started) - started, 3),
        "faults": [
            {"kind": f.kind, "at_s": round(f.at - started, 3), "took_s": round(f.recovered_s, 3)}
            for f in run.faults
        ],
        "statuses": statuses,
        "error_log_lines": _error_lines(run.stack),
        "logs": str(run.stack.workdir),
    }


def main() -> None:
    defaults = Options()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=defaults.messages)
    parser.add_argument("--accounts", type=int, default=defaults.accounts)
    parser.add_argument("--senders", type=int, default=defaults.senders)
    parser.add_argument("--defer-rate", type=float, default=defaults.defer_rate)
    parser.add_argument("--min-gap-ms", type=int, default=defaults.min_gap_ms)
    parser.add_argument("--first-fault-s", type=float, default=defaults.first_fault_s)
    parser.add_argument("--fault-every-s", type=float, default=defaults.fault_every_s)
    parser.add_argument("--restart-delay-s", type=float, default=defaults.restart_delay_s)
    parser.add_argument("--postgres-down-s", type=float, default=defaults.postgres_down_s)
    parser.add_argument(
        "--faults",
        default=",".join(DEFAULT_FAULTS),
        help=f"comma-separated, in order; kinds: {', '.join(FAULT_KINDS)}",
    )
    args = parser.parse_args()
    options = Options(
        messages=args.messages,
        accounts=args.accounts,
        senders=args.senders,
        defer_rate=args.defer_rate,
        min_gap_ms=args.min_gap_ms,
        first_fault_s=args.first_fault_s,
        fault_every_s=args.fault_every_s,
        restart_delay_s=args.restart_delay_s,
        postgres_down_s=args.postgres_down_s,
        faults=[f.strip() for f in args.faults.split(",") if f.strip()],
    )
    report = uvloop.run(run_chaos(options))
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
