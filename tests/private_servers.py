"""Private PostgreSQL and RabbitMQ servers that a test or the chaos run may restart or kill.

The shared servers of the machine serve every other test run at the same time, so faults are
only ever injected into a server of our own: its own data directory under a temporary
directory, its own free ports, started and stopped here.

```python
async with PrivatePostgres() as postgres, PrivateRabbit() as rabbit:
    dsn = await postgres.create_database("mailfleet")   # migrated
    await postgres.restart()                            # pg_ctl restart -m fast
    await rabbit.restart_app()                          # rabbitmqctl stop_app; start_app
```
"""

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg
from mailfleet_common.migrate import migrate

from tests.stack import StackError, free_port

_PG_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))


def _postgres_bin(name: str) -> str:
    if not _PG_BINARIES:
        raise StackError("no PostgreSQL server binaries under /usr/lib/postgresql")
    return str(_PG_BINARIES[-1].parent / name)


async def _run(argv: list[str], *, env: dict[str, str] | None = None, user: str | None = None,
               timeout_s: float = 60.0) -> str:  # fmt: skip
    """Run a command to completion; StackError with its output if it fails.

    The output goes through a file, not a pipe: `pg_ctl start` leaves a server behind that
    would hold a pipe open, and reading it to its end would never finish.
    """
    if user is not None and os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    with tempfile.TemporaryFile() as output:
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output
        )
        try:
            async with asyncio.timeout(timeout_s):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise StackError(f"{argv[0]} did not finish within {timeout_s}s") from None
        output.seek(0)
        text = output.read().decode(errors="replace")
    if process.returncode != 0:
        raise StackError(f"{' '.join(argv[:4])} failed ({process.returncode}):\n{text[-2000:]}")
    return text


def _rabbit_bin(name: str) -> str:
    # The scripts themselves, not /usr/sbin's wrappers: those switch to the rabbitmq user and
    # its home, whose cookie and settings belong to the machine's shared node.
    direct = Path("/usr/lib/rabbitmq/bin") / name
    return str(direct) if direct.exists() else (shutil.which(name) or name)


class _PrivateServer(ABC):
    """Started on entering, stopped and deleted on leaving."""

    @abstractmethod
    async def start(self) -> None:
        """Start the server and wait until it serves."""

    @abstractmethod
    async def destroy(self) -> None:
        """Stop the server and delete its files."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.destroy()


class PrivatePostgres(_PrivateServer):
    """A throwaway PostgreSQL cluster on a free port (run as `postgres` when we are root)."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="mailfleet-pg-"))
        self.data = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.port = free_port()
        self._user = "postgres" if os.geteuid() == 0 else None
        self.started = False

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def start(self) -> None:
        """Initialise the cluster on first use, then start it and wait until it accepts."""
        if not self.data.exists():
            if self._user is not None:
                entry = pwd.getpwnam(self._user)
                os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
            await _run(
                [_postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--no-sync"],
                user=self._user,
            )  # fmt: skip
            with (self.data / "postgresql.conf").open("a") as conf:
                # Durability against a server restart is what is tested, not against the
                # machine losing power: skip the disk flushes, the machine is shared.
                conf.write(
                    f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.workdir}'\n"
                    "max_connections = 300\nfsync = off\nfull_page_writes = off\n"
                    "shared_buffers = 64MB\n"
                )
        await self._pg_ctl("start")
        self.started = True

    async def restart(self, down_s: float = 0.0) -> float:
        """Restart as an operator would: every session is cut (`pg_ctl restart -m fast`).

        With `down_s`, the server is stopped, stays down that long, then starts: a slower
        restart, as of a bigger cluster. Returns how long it was away, in seconds.
        """
        started = time.monotonic()
        if down_s:
            await self._pg_ctl("stop", "-m", "fast")
            await asyncio.sleep(down_s)
            await self._pg_ctl("start")
        else:
            await self._pg_ctl("restart", "-m", "fast")
        return time.monotonic() - started

    async def stop(self) -> None:
        if self.started:
            await self._pg_ctl("stop", "-m", "immediate")
            self.started = False

    async def destroy(self) -> None:
        """Stop the server and delete its files."""
        with contextlib.suppress(StackError):
            await self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def create_database(self, name: str) -> str:
        """A new database with every migration applied; returns its DSN."""
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        await migrate(self.dsn(name))
        return self.dsn(name)

    async def _pg_ctl(self, *args: str) -> None:
        await _run(
            [_postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w",
             "-t", "60", *args],
            user=self._user,
        )  # fmt: skip


class PrivateRabbit(_PrivateServer):
    """A RabbitMQ node of our own: own node name, ports, database, logs and cookie."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="mailfleet-rabbit-"))
        self.port = free_port()
        self.node = f"mailfleet-{secrets.token_hex(4)}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "server.log"
        (self.workdir / "home").mkdir()
        cookie = self.workdir / "home" / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\ndisk_free_limit.absolute = 50MB\n"
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(self.workdir / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbit.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def start(self) -> None:
        """Start the node in the foreground of a child process; wait until it serves."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220 - outlives the loop, like Stack's
                [_rabbit_bin("rabbitmq-server")],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            # `wait` polls the pid file the node writes, then waits for the app to be up.
            await self.ctl("wait", self.env["RABBITMQ_PID_FILE"], "--timeout", "90",
                           timeout_s=100)  # fmt: skip
        except StackError:
            await self.destroy()
            raise

    async def ctl(self, *args: str, timeout_s: float = 60.0) -> str:
        """rabbitmqctl against this node only."""
        return await _run([_rabbit_bin("rabbitmqctl"), "-q", "-n", self.node, *args], env=self.env,
                          timeout_s=timeout_s)  # fmt: skip

    async def restart_app(self, down_s: float = 0.0) -> float:
        """`stop_app`, an optional pause, `start_app`: every connection is cut.

        Returns how long the broker was away, in seconds.
        """
        started = time.monotonic()
        await self.ctl("stop_app")
        if down_s:
            await asyncio.sleep(down_s)
        await self.ctl("start_app")
        return time.monotonic() - started

    async def destroy(self) -> None:
        """Stop the node and delete its files."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(StackError):
                await self.ctl("stop", timeout_s=60)
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, 9)
            await asyncio.to_thread(self.process.wait)
        self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)
