"""What every benchmark run needs: a throwaway database and vhost, and process CPU readings."""

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from mailfleet_common.migrate import migrate

ADMIN_DSN = os.environ.get(
    "MAILFLEET_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBIT_URL = os.environ.get("MAILFLEET_BENCH_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def server_pids() -> dict[str, list[int]]:
    """PostgreSQL and RabbitMQ server processes on this machine, if any."""
    found: dict[str, list[int]] = {"postgres": [], "rabbitmq": []}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if comm in ("postgres", "postmaster"):
            found["postgres"].append(int(entry))
        elif comm == "beam.smp":
            found["rabbitmq"].append(int(entry))
    return found


def _rabbitmqctl(*args: str, timeout: float = 60) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=timeout)


class Scratch:
    """A throwaway database and (on a local broker) vhost for one benchmark run.

    `broker=False`: a benchmark that never talks to RabbitMQ gets no vhost.
    """

    def __init__(self, *, broker: bool = True) -> None:
        self.name = f"mailfleet_bench_{uuid.uuid4().hex[:8]}"
        self.dsn = urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{self.name}"))
        parts = urlsplit(RABBIT_URL)
        self.local_broker = (
            broker
            and shutil.which("rabbitmqctl") is not None
            and parts.hostname in ("127.0.0.1", "localhost")
        )
        self.vhost = f"mailfleet-{self.name}"
        self.rabbit_url = (
            urlunsplit(parts._replace(path=f"/{self.vhost}")) if self.local_broker else RABBIT_URL
        )

    async def __aenter__(self) -> "Scratch":
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        await migrate(self.dsn)
        if self.local_broker:
            _rabbitmqctl("add_vhost", self.vhost)
            user = urlsplit(RABBIT_URL).username or "guest"
            _rabbitmqctl("set_permissions", "-p", self.vhost, user, ".*", ".*", ".*")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.local_broker:
            # Deleting thousands of queues takes the broker minutes on a busy machine.
            _rabbitmqctl("delete_vhost", self.vhost, timeout=1800)
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()
