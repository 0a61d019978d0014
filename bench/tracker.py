"""Tracker benchmark: open-pixel requests under wrk, every event confirmed in PostgreSQL.

Runs the real tracker and dispatcher (which records the events) against a throwaway database,
seeds sent messages, and sends GET /track/open/{token} with wrk at 64 connections, each request
a different message's token. In the same run, the same wrk load hits a bare raw-ASGI app
(bench.bare) under the same uvicorn, loop and HTTP parser, before and after the tracker; the
ratio is against their mean. The tracker runs twice: with the recorder (the dispatcher)
stopped, its events waiting in RabbitMQ (requests_per_s, p99_ms, ratio), and with the recorder
writing them as they come on the same two cores (recording_*). Then waits until every open
the tracker accepted is a row in `events` (lost). Prints one JSON line.

    uv run python -m bench.tracker [--duration 10] [--connections 64] [--messages 20000]
"""

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvloop
from mailfleet_common.crypto import generate_key
from mailfleet_common.tracking import TokenKind, TokenSigner, open_path, parse_keys

from bench.bare import GIF
from bench.scratch import Scratch, cpu_seconds, server_pids
from tests.stack import ServiceProcess, Stack, free_port

# A desktop mail client, so the opens count as human ones (no scanner signature).
USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.0"
_LUA = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = math.random(#paths)
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
# The tracker's count of opens it accepted (and so promised to record).
_ACCEPTED = re.compile(r'^mailfleet_tracker_hits_total\{kind="opened"\} ([0-9.e+]+)$', re.MULTILINE)


def _wrk(url: str, script: Path, connections: int, duration_s: int) -> dict[str, float]:
    """Run wrk and read requests/s, p99 and the request and error counts from its report."""
    output = subprocess.run(
        [
            "wrk", "-t2", f"-c{connections}", f"-d{duration_s}s", "--latency",
            "-H", f"User-Agent: {USER_AGENT}", "-s", str(script), url,
        ],
        check=True, capture_output=True, text=True, timeout=duration_s + 60,
    ).stdout  # fmt: skip
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    p99 = re.search(r"^\s+99%\s+([0-9.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    total = re.search(r"(\d+) requests in", output)
    if rate is None or p99 is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "requests_per_s": float(rate.group(1)),
        "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
        "requests": int(total.group(1)),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


async def _seed(dsn: str, messages: int) -> list[int]:
    """A campaign with `messages` sent messages; returns their ids."""
    conn = await asyncpg.connect(dsn)
    try:
        owner = await conn.fetchval(
            "INSERT INTO users (email, password_hash, role) "
            "VALUES ('bench@example.com', 'x', 'admin') RETURNING id"
        )
        campaign = await conn.fetchval(
            "INSERT INTO campaigns (owner_id, name, subject, status) "
            "VALUES ($1, 'bench', 'bench', 'running') RETURNING id",
            owner,
        )
        rows = await conn.fetch(
            """
            INSERT INTO messages (campaign_id, email, status, attempts, sent_at)
            SELECT $1, 'r' || n || '@example.com', 'sent', 1, now()
            FROM generate_series(1, $2) AS n
            RETURNING id
            """,
            campaign,
            messages,
        )
    finally:
        await conn.close()
    return [row["id"] for row in rows]


async def _accepted_opens(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    match = _ACCEPTED.search(text)
    if match is None:
        raise RuntimeError("the tracker's /metrics has no count of accepted opens")
    return float(match.group(1))


async def _recorded_opens(dsn: str, expected: int, within_s: float) -> int:
    """Opens in `events`, once they reach `expected` or stop growing for `within_s`."""
    conn = await asyncpg.connect(dsn)
    try:
        recorded, last_change = -1, time.monotonic()
        while True:
            count = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'opened'")
            if count != recorded:
                recorded, last_change = count, time.monotonic()
            if recorded >= expected or time.monotonic() - last_change > within_s:
                return int(recorded)
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def run(duration_s: int, connections: int, messages: int) -> dict[str, object]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk, or `make bench-tracker`)")
    async with (
        Scratch() as scratch,
        Stack(
            postgres_dsn=scratch.dsn,
            rabbit_url=scratch.rabbit_url,
            crypto_keys=generate_key(),
            env={"MAILFLEET_LOG_LEVEL": "WARNING"},
        ) as stack,
    ):
        ids = await _seed(scratch.dsn, messages)
        dispatcher = await stack.start_dispatcher()  # declares the event queues, records events
        tracker = await stack.start_tracker()
        bare_port = free_port()
        bare = ServiceProcess(
            "bare",
            [sys.executable, "-m", "bench.bare", "--port", str(bare_port)],
            env=stack.env,
            port=bare_port,
            log_path=stack.workdir / "bare.log",
            ready_path=None,
        )
        stack.services.append(bare)
        await bare.start()

        # Issued an hour ago: not a scanner's fetch within seconds of delivery.
        signer = TokenSigner(parse_keys(stack.tracking_keys))
        issued = int(time.time()) - 3600
        paths_file = stack.workdir / "paths.txt"
        paths_file.write_text(
            "".join(open_path(signer.sign(TokenKind.OPEN, i, issued)) + "\n" for i in ids)
        )
        script = stack.workdir / "paths.lua"
        script.write_text(_LUA % paths_file)

        def load(url: str, seconds: int = duration_s) -> Awaitable[dict[str, float]]:
            return asyncio.to_thread(_wrk, url, script, connections, seconds)

        async def measured(url: str, services: list[ServiceProcess]) -> dict[str, Any]:
            """One wrk run, with the CPU each process (and the servers) used per request."""
            groups = {s.name: [s.pid] for s in services}
            groups.update(server_pids())
            before = {g: sum(map(cpu_seconds, pids)) for g, pids in groups.items()}
            result: dict[str, Any] = dict(await load(url))
            result["cpu_us_per_request"] = {
                g: round((sum(map(cpu_seconds, pids)) - before[g]) * 1e6 / result["requests"], 1)
                for g, pids in groups.items()
            }
            return result

        async with httpx.AsyncClient(base_url=tracker.url) as client:
            sample = await client.get(open_path(signer.sign(TokenKind.OPEN, ids[0], issued)))
            assert sample.status_code == 200, sample.text
            assert sample.content == GIF, "the bare app must serve the tracker's pixel"
            sample = await httpx.AsyncClient(base_url=bare.url).get("/")
            assert sample.content == GIF

            # Warm both servers. Then bare, tracker, tracker again, bare: the mean of the two
            # bare runs evens out drift on a shared machine. In the first tracker run the
            # recorder is stopped, so the events wait in RabbitMQ's durable queue as they would
            # for a recorder on other machines; in the second it records them as they come,
            # on the same two cores as wrk, the tracker, PostgreSQL and RabbitMQ.
            await load(bare.url, 2)
            await load(tracker.url, 2)
            accepted_before = await _accepted_opens(client)
            bare_before = await measured(bare.url, [bare])
            await dispatcher.stop()
            alone = await measured(tracker.url, [tracker])
            await dispatcher.start()
            recording = await measured(tracker.url, [tracker, dispatcher])
            bare_after = await measured(bare.url, [bare])
            accepted = await _accepted_opens(client)
        accepted_total = int(accepted)
        recorded = await _recorded_opens(scratch.dsn, accepted_total, within_s=30.0)

    bare_rate = (bare_before["requests_per_s"] + bare_after["requests_per_s"]) / 2
    return {
        "connections": connections,
        "duration_s": duration_s,
        "requests_per_s": round(alone["requests_per_s"], 1),
        "p99_ms": round(alone["p99_ms"], 2),
        "lost": accepted_total - recorded,
        "bare_requests_per_s": round(bare_rate, 1),
        "ratio": round(alone["requests_per_s"] / bare_rate, 3),
        "recording_requests_per_s": round(recording["requests_per_s"], 1),
        "recording_p99_ms": round(recording["p99_ms"], 2),
        "recording_ratio": round(recording["requests_per_s"] / bare_rate, 3),
        "bare_p99_ms": round((bare_before["p99_ms"] + bare_after["p99_ms"]) / 2, 2),
        "bare_before_per_s": round(bare_before["requests_per_s"], 1),
        "bare_after_per_s": round(bare_after["requests_per_s"], 1),
        "requests": int(alone["requests"] + recording["requests"]),
        "accepted_in_runs": int(accepted - accepted_before),
        "accepted_total": accepted_total,
        "recorded": recorded,
        "non_2xx": int(alone["non_2xx"] + recording["non_2xx"]),
        "socket_errors": int(alone["socket_errors"] + recording["socket_errors"]),
        "cpu_us_per_request": {
            "bare": bare_before["cpu_us_per_request"]["bare"],
            "tracker": alone["cpu_us_per_request"]["tracker"],
            "recording": recording["cpu_us_per_request"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    result = uvloop.run(run(args.duration, args.connections, args.messages))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
