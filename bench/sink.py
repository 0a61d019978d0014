"""CPU per message of mailfleet-sink against an aiosmtplib client (not collected by pytest).

    uv run python -m bench.sink --messages 10000 --connections 16

Prints one JSON line: the sink's and the client's CPU seconds per message, from the sink's
/proc/<pid>/stat and the client's getrusage, both counted only while messages flow.
"""

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from tests.stack import Sink, free_port


def _messages(count: int) -> list[tuple[str, str, bytes]]:
    built = []
    for n in range(count):
        message = EmailMessage()
        message["From"] = "sender@example.com"
        message["To"] = f"reader{n}@example.net"
        message["Subject"] = f"Hello {n}"
        message["Message-ID"] = f"<{n}@example.com>"
        message.set_content("Lorem ipsum dolor sit amet. " * 60)
        built.append(("sender@example.com", f"reader{n}@example.net", message.as_bytes()))
    return built


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _send(port: int, queue: list[tuple[str, str, bytes]]) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
        while queue:
            sender, recipient, data = queue.pop()
            await client.sendmail(sender, [recipient], data)


async def measure(count: int, connections: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="sink-perf-"))
    sink = Sink(port=free_port(), record_path=workdir / "r.jsonl", log_path=workdir / "sink.log")
    await sink.start()
    try:
        queue = _messages(count)
        sink_before, client_before, started = _cpu_of(sink.pid), _own_cpu(), time.perf_counter()
        await asyncio.gather(*(_send(sink.port, queue) for _ in range(connections)))
        elapsed = time.perf_counter() - started
        client_cpu = _own_cpu() - client_before
        await sink.wait_for_records(count)
        sink_cpu = _cpu_of(sink.pid) - sink_before
    finally:
        await sink.stop()
    return {
        "messages": count,
        "connections": connections,
        "per_second": round(count / elapsed),
        "sink_cpu_us_per_message": round(sink_cpu / count * 1e6, 1),
        "client_cpu_us_per_message": round(client_cpu / count * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.messages, args.connections))))


if __name__ == "__main__":
    main()
