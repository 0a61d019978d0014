"""What an assignment tick costs as the fleet grows: 50, 1,000 and 10,000 active accounts.

    uv run python -m bench.dispatch [--accounts 50,1000,10000] [--messages 10000]

In a throwaway database, for each fleet size in turn (accounts of 500 a day, no pacing), the
dispatcher's Assigner runs against the real PostgreSQL with a publisher that discards its
commands, and this measures:

- idle_tick_ms: the median of 50 ticks with nothing queued;
- assign_s, assign_ticks, max_tick_ms: handing out `messages` queued messages of one running
  campaign until a tick assigns nothing more (every message then `assigned`);
- inflight_tick_ms: the median tick once they are all in flight and nothing is queued;
- paced_full_tick_ms: the median tick with as many messages queued again, while every
  account has as much in flight as its pace allows (the steady state of a large campaign);
- saturated_tick_ms: the median tick with that backlog when no account can take any more
  today (every account at its daily limit): a fleet that has used up its day.

Each figure comes twice: wall time, and CPU time (`*_cpu_ms`, `assign_cpu_s`: this process
plus the PostgreSQL backend serving the assigner's one connection), which depends much less
on what else the machine runs. It prints one JSON line, keys suffixed with the fleet size
(e.g. `assign_s_10000`).
"""

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from mailfleet_common.db import Pool, create_pool
from mailfleet_common.settings import PostgresSettings
from mailfleet_dispatcher.assignment import Assigner
from mailfleet_dispatcher.settings import DispatchSettings

from bench.scratch import Scratch, cpu_seconds

DAILY_LIMIT = 500


class _Discard:
    async def publish_batches(
        self, assignments: Mapping[UUID, Sequence[int]], traces: object = None
    ) -> int:
        """Commands go nowhere: only the database work of a tick is measured."""
        return len(assignments)


@dataclass
class _Cpu:
    """CPU spent by this process and by the database backend that serves the assigner."""

    backend_pid: int

    def seconds(self) -> float:
        return time.process_time() + cpu_seconds(self.backend_pid)


async def _ticks(assigner: Assigner, cpu: _Cpu, ticks: int = 50) -> tuple[float, float]:
    """The median wall time of `ticks` ticks and their mean CPU time, in milliseconds."""
    times = []
    cpu_started = cpu.seconds()
    for _ in range(ticks):
        started = time.perf_counter()
        await assigner.tick()
        times.append((time.perf_counter() - started) * 1000)
    spent = (cpu.seconds() - cpu_started) / ticks * 1000
    return round(statistics.median(times), 2), round(spent, 2)


async def _grow_fleet(db: "asyncpg.Connection[Any]", total: int) -> None:
    have = await db.fetchval("SELECT count(*) FROM accounts")
    await db.execute(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit)
        SELECT 'bench ' || g, '127.0.0.1', 2525, 'none', 'news@example.com', $2
        FROM generate_series($1 + 1, $3) AS g
        """,
        have,
        DAILY_LIMIT,
        total,
    )
    await db.execute("ANALYZE accounts")


async def _queue(db: "asyncpg.Connection[Any]", campaign: UUID, count: int, tag: str) -> None:
    await db.execute(
        """
        INSERT INTO messages (campaign_id, email)
        SELECT $1, 'r' || g || '-' || $3 || '@example.com' FROM generate_series(1, $2) AS g
        """,
        campaign,
        count,
        tag,
    )
    await db.execute("ANALYZE messages")


async def _measure(
    db: "asyncpg.Connection[Any]", pool: Pool, cpu: _Cpu, size: int, messages: int
) -> dict[str, float]:
    assigner = Assigner(pool, _Discard(), DispatchSettings())
    await db.execute("TRUNCATE messages, account_daily_usage")
    campaign: UUID = await db.fetchval("SELECT id FROM campaigns")
    figures: dict[str, float] = {}
    figures["idle_tick_ms"], figures["idle_tick_cpu_ms"] = await _ticks(assigner, cpu)

    await _queue(db, campaign, messages, f"a{size}")
    started, cpu_started = time.perf_counter(), cpu.seconds()
    ticks, longest = 0, 0.0
    while True:
        tick_started = time.perf_counter()
        result = await assigner.tick()
        longest = max(longest, time.perf_counter() - tick_started)
        ticks += 1
        if result.assigned == 0:
            break
    figures["assign_s"] = round(time.perf_counter() - started, 3)
    figures["assign_cpu_s"] = round(cpu.seconds() - cpu_started, 3)
    figures["assign_ticks"] = ticks
    figures["max_tick_ms"] = round(longest * 1000, 1)
    assigned = await db.fetchval("SELECT count(*) FROM messages WHERE status = 'assigned'")
    if assigned != messages:
        raise SystemExit(f"{assigned} of {messages} messages assigned over {size} accounts")
    figures["inflight_tick_ms"], figures["inflight_tick_cpu_ms"] = await _ticks(assigner, cpu)

    # A backlog while every account has as much in flight as its pace allows: the steady
    # state of a large campaign between two sends.
    await _queue(db, campaign, messages, f"p{size}")
    paced = Assigner(pool, _Discard(), DispatchSettings(max_inflight=max(1, messages // size)))
    figures["paced_full_tick_ms"], figures["paced_full_tick_cpu_ms"] = await _ticks(paced, cpu)

    # A used-up day: every account at its limit, a backlog waiting for tomorrow.
    await db.execute("UPDATE messages SET status = 'sent' WHERE status = 'assigned'")
    await db.execute(
        """
        INSERT INTO account_daily_usage AS u (account_id, day, reserved)
        SELECT id, (now() AT TIME ZONE 'UTC')::date, daily_limit FROM accounts
        ON CONFLICT (account_id, day) DO UPDATE SET reserved = EXCLUDED.reserved
        """
    )
    figures["saturated_tick_ms"], figures["saturated_tick_cpu_ms"] = await _ticks(assigner, cpu)
    return figures


async def run(sizes: list[int], messages: int) -> dict[str, float]:
    async with Scratch(broker=False) as scratch:
        db = await asyncpg.connect(scratch.dsn)
        # One connection, so one backend process does all the database work measured.
        pool = await create_pool(PostgresSettings(dsn=scratch.dsn, pool_min=1, pool_max=1))
        cpu = _Cpu(await pool.fetchval("SELECT pg_backend_pid()"))
        try:
            owner = await db.fetchval(
                "INSERT INTO users (email, password_hash, role)"
                " VALUES ('bench@example.com', 'x', 'admin') RETURNING id"
            )
            await db.execute(
                "INSERT INTO campaigns (owner_id, name, subject, text_body, status)"
                " VALUES ($1, 'bench', 'Hello', 'Hi', 'running')",
                owner,
            )
            line: dict[str, float] = {}
            for size in sorted(sizes):
                await _grow_fleet(db, size)
                figures = await _measure(db, pool, cpu, size, messages)
                line.update({f"{key}_{size}": value for key, value in figures.items()})
            return line
        finally:
            await pool.close()
            await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", default="50,1000,10000", help="fleet sizes, comma-separated")
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.accounts.split(",")]
    print(json.dumps(asyncio.run(run(sizes, args.messages))))


if __name__ == "__main__":
    main()
