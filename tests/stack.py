"""Runs mailfleet's real processes for end-to-end tests and benchmarks, and stops them.

```python
async with Stack(postgres_dsn=dsn, rabbit_url=url, crypto_keys=keys) as stack:
    sink = await stack.start_sink()
    await stack.start_api()
    await stack.start_dispatcher()
    await stack.start_sender()
    async with await stack.admin_client() as client:
        ...  # create an account pointing at sink.port, a campaign, enqueue
    records = await sink.wait_for_records(100)
```

Every process gets its own free port, logs to a file under `Stack.workdir`, and inherits no
MAILFLEET_* variable from the caller's environment: only the stack's settings and the
overrides given to `Stack(env=...)` or to the `start_*` call. A process that dies before it is
ready raises `StackError` with the end of its log.
"""

import asyncio
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

STOP_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 30.0

_running: set["ServiceProcess"] = set()


@atexit.register
def _kill_leftovers() -> None:
    """A test run that dies without stopping its stack must not leave servers behind."""
    for service in list(_running):
        with contextlib.suppress(ProcessLookupError):
            os.kill(service.pid, signal.SIGKILL)


class StackError(RuntimeError):
    """A service did not start, or did not get ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def executable(name: str) -> str:
    """A console script of this environment (beside the running Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} is not installed in this environment (uv sync?)")
    return found


def _base_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("MAILFLEET_")}


class ServiceProcess:
    """One service run as a subprocess: started, awaited until ready, stopped or killed.

    `ready_path` is polled over HTTP until it answers 200; without one, the port accepting a
    TCP connection means ready.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        port: int,
        log_path: Path,
        ready_path: str | None = "/ready",
        host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.host = host
        self.port = port
        self.log_path = log_path
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<ServiceProcess {self.name} port={self.port} pid={self.pid or '-'}>"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return 0 if self.process is None else self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self, ready_within_s: float = READY_TIMEOUT_S) -> Self:
        """Start the process (again, after a stop or kill) and wait until it is ready."""
        if self.running:
            raise StackError(f"{self.name} is running already")
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start {' '.join(self.argv)}\n".encode())
            log.flush()
            # Popen, not asyncio's subprocesses: the process must outlive the event loop that
            # started it (a benchmark may run several), and forking takes no time to speak of.
            self.process = subprocess.Popen(  # noqa: ASYNC220
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal is for the harness only
            )
        _running.add(self)
        try:
            await self.wait_ready(ready_within_s)
        except BaseException:
            await self.stop()
            raise
        return self

    async def wait_ready(self, within_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + within_s
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while True:
                if not self.running:
                    raise StackError(
                        f"{self.name} exited with {self.returncode} before it was ready:\n"
                        + self.log_tail()
                    )
                if await self._is_ready(client):
                    return
                if time.monotonic() > deadline:
                    raise StackError(
                        f"{self.name} was not ready after {within_s}s:\n" + self.log_tail()
                    )
                await asyncio.sleep(0.05)

    async def _is_ready(self, client: httpx.AsyncClient) -> bool:
        if self.ready_path is None:
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        try:
            response = await client.get(self.ready_path)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def stop(self, grace_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after `grace_s`; returns the exit code."""
        if not self.running:
            return self._forget()
        self._signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await self._exited()
        except TimeoutError:
            self._signal(signal.SIGKILL)
            await self._exited()
        return self._forget()

    async def kill(self, signum: int = signal.SIGKILL) -> int | None:
        """Send `signum` (SIGKILL by default: a crash) and wait until the process is gone."""
        if not self.running:
            return self._forget()
        self._signal(signum)
        await self._exited()
        return self._forget()

    def _signal(self, signum: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def _exited(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(self.process.wait)

    def _forget(self) -> int | None:
        _running.discard(self)
        return self.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Sink(ServiceProcess):
    """The mailfleet-sink capture server and the records it has written."""

    def __init__(
        self,
        *,
        port: int,
        record_path: Path,
        log_path: Path,
        maildir: Path | None = None,
        name: str = "sink",
        defer_rate: float = 0.0,
    ) -> None:
        argv = [executable("mailfleet-sink"), "--port", str(port), "--record", str(record_path)]
        if maildir is not None:
            argv += ["--maildir", str(maildir)]
        if defer_rate:
            argv += ["--defer-rate", str(defer_rate)]
        super().__init__(
            name, argv, env=_base_environment(), port=port, log_path=log_path, ready_path=None
        )
        self.record_path = record_path
        self.maildir = maildir

    def records(self) -> list[dict[str, Any]]:
        """Every message recorded so far (the sink writes its records every ~0.5 s)."""
        try:
            text = self.record_path.read_text()
        except FileNotFoundError:
            return []
        # The last line may be half written while the sink flushes.
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    async def wait_for_records(self, count: int, within_s: float = 30.0) -> list[dict[str, Any]]:
        """The records once there are at least `count`; StackError after `within_s`."""
        deadline = time.monotonic() + within_s
        while len(found := self.records()) < count:
            if time.monotonic() > deadline:
                raise StackError(f"the sink recorded {len(found)} of {count} messages")
            await asyncio.sleep(0.1)
        return found


class Stack:
    """The services of one test or benchmark run, sharing a database, a broker and secrets."""

    def __init__(
        self,
        *,
        postgres_dsn: str,
        rabbit_url: str,
        crypto_keys: str,
        jwt_secret: str | None = None,
        tracking_keys: str | None = None,
        workdir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="mailfleet-stack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The tracker's port is chosen now: senders put its URL into every message they build.
        self.tracker_port = free_port()
        self.tracking_keys = tracking_keys or secrets.token_urlsafe(32)
        self.env = {
            **_base_environment(),
            "MAILFLEET_POSTGRES__DSN": postgres_dsn,
            "MAILFLEET_RABBIT__URL": rabbit_url,
            "MAILFLEET_CRYPTO__KEYS": crypto_keys,
            "MAILFLEET_AUTH__JWT_SECRET": jwt_secret or secrets.token_urlsafe(32),
            "MAILFLEET_HTTP__HOST": "127.0.0.1",
            "MAILFLEET_TRACKING__KEYS": self.tracking_keys,
            "MAILFLEET_TRACKING__BASE_URL": f"http://127.0.0.1:{self.tracker_port}",
            **(env or {}),
        }
        self.services: list[ServiceProcess] = []
        self.api: ServiceProcess | None = None
        self.tracker: ServiceProcess | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _unique_name(self, name: str) -> str:
        taken = {service.name for service in self.services}
        unique, number = name, 1
        while unique in taken:
            number += 1
            unique = f"{name}-{number}"
        return unique

    def _service(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None,
        port: int | None = None,
    ) -> ServiceProcess:
        name = self._unique_name(name)
        port = port or free_port()
        service = ServiceProcess(
            name,
            argv,
            env={**self.env, "MAILFLEET_HTTP__PORT": str(port), **(env or {})},
            port=port,
            log_path=self.workdir / f"{name}.log",
        )
        self.services.append(service)
        return service

    async def start_sink(self, *, maildir: bool = False, defer_rate: float = 0.0) -> Sink:
        """A capture SMTP server on a free port, recording to a file in the workdir.

        With `defer_rate`, that share of messages is answered 451 after DATA, at random.
        """
        name = self._unique_name("sink")
        sink = Sink(
            name=name,
            port=free_port(),
            record_path=self.workdir / f"{name}.jsonl",
            log_path=self.workdir / f"{name}.log",
            maildir=self.workdir / f"{name}-mail" if maildir else None,
            defer_rate=defer_rate,
        )
        self.services.append(sink)
        return await sink.start()

    async def start_api(self, env: Mapping[str, str] | None = None) -> ServiceProcess:
        """`mailfleet api` on a free port (MAILFLEET_HTTP__PORT), ready when /ready says 200."""
        self.api = await self._service("api", [executable("mailfleet"), "api"], env).start()
        return self.api

    async def start_dispatcher(self, env: Mapping[str, str] | None = None) -> ServiceProcess:
        return await self._service("dispatcher", [executable("mailfleet-dispatcher")], env).start()

    async def start_sender(
        self, env: Mapping[str, str] | None = None, ready_within_s: float = READY_TIMEOUT_S
    ) -> ServiceProcess:
        """One more sender replica, each on its own port (sender, sender-2, ...).

        A replica is ready once it consumes every account's queue: give it longer with
        thousands of accounts.
        """
        service = self._service("sender", [executable("mailfleet-sender")], env)
        return await service.start(ready_within_s)

    async def start_tracker(self, env: Mapping[str, str] | None = None) -> ServiceProcess:
        """The tracker, on the port whose URL the senders of this stack put into messages."""
        if self.tracker is not None and self.tracker.running:
            raise StackError("the tracker is running already")
        self.tracker = self._service(
            "tracker", [executable("mailfleet-tracker")], env, port=self.tracker_port
        )
        return await self.tracker.start()

    async def start_bouncer(self, env: Mapping[str, str] | None = None) -> ServiceProcess:
        """One more bouncer replica (bouncer, bouncer-2, ...), reading the accounts' mailboxes."""
        return await self._service("bouncer", [executable("mailfleet-bouncer")], env).start()

    async def start_webhooks(self, env: Mapping[str, str] | None = None) -> ServiceProcess:
        """One more webhook worker replica (webhooks, webhooks-2, ...), delivering the outbox."""
        return await self._service("webhooks", [executable("mailfleet-webhooks")], env).start()

    async def stop(self) -> None:
        """Stop every service, the last started first, all of them even if one fails."""
        for service in reversed(self.services):
            await service.stop()

    async def run_cli(self, *args: str) -> str:
        """Run `mailfleet <args>` with the stack's environment; returns its output."""
        process = await asyncio.create_subprocess_exec(
            executable("mailfleet"),
            *args,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        text = output.decode(errors="replace")
        if process.returncode != 0:
            raise StackError(
                f"mailfleet {' '.join(args[:1])} failed ({process.returncode}):\n{text}"
            )
        return text

    async def create_admin(self, email: str, password: str) -> None:
        """An admin user made with the CLI; nothing happens if the email exists already."""
        await self.run_cli(
            "create-user", "--email", email, "--role", "admin", "--password", password,
            "--if-missing",
        )  # fmt: skip

    async def admin_token(self, email: str, password: str) -> str:
        """A bearer token for an admin, created with the CLI first if missing."""
        if self.api is None:
            raise StackError("start_api() first")
        await self.create_admin(email, password)
        async with httpx.AsyncClient(base_url=self.api.url, timeout=30.0) as client:
            response = await client.post(
                "/api/admin/login", json={"email": email, "password": password}
            )
        if response.status_code != 200:
            raise StackError(f"login failed: {response.status_code} {response.text}")
        token: str = response.json()["access_token"]
        return token

    async def admin_client(
        self, email: str | None = None, password: str | None = None
    ) -> httpx.AsyncClient:
        """An API client logged in as an admin (created if missing); the caller closes it.

        The client is returned unopened, so `async with await stack.admin_client() as c:`
        works as well as `aclosing(...)`. By default a new admin with a generated email and
        password is made for the call.
        """
        email = email or f"admin-{secrets.token_hex(4)}@example.com"
        token = await self.admin_token(email, password or secrets.token_urlsafe(18))
        assert self.api is not None
        return httpx.AsyncClient(
            base_url=self.api.url, timeout=30.0, headers={"Authorization": f"Bearer {token}"}
        )
