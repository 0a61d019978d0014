"""Throughput and CPU cost of the sender alone against a local SMTP sink.

    uv run python -m bench.sender [--messages 20000] [--accounts 16]

Reports: MIME rendering cost per ~4 KB message, without and with tracking links; raw
aiosmtplib (pre-built messages, reused connections) rate and CPU per message; the sender
pipeline (real PostgreSQL, RabbitMQ, claims, rendering and tracking links, SMTP, outcomes,
SendAttempts) rate and CPU per message. The sink runs in its own
process so its CPU is not counted.
"""

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiosmtplib
import asyncpg
from faststream.rabbit import RabbitBroker
from mailfleet_common import topology
from mailfleet_common.messages import SendBatch
from mailfleet_common.migrate import migrate
from mailfleet_common.publishing import BrokerPublisher
from mailfleet_common.settings import PostgresSettings, RabbitSettings, TrackingSettings
from mailfleet_common.templating import CampaignTemplates, compile_campaign
from mailfleet_sender.mime import build_message, mailbox, template_context
from mailfleet_sender.replica import SenderReplica
from mailfleet_sender.settings import SenderSettings, Settings
from mailfleet_sender.tracking import Tracker

from bench.content import HTML, SUBJECT, TEXT

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
RABBIT = "amqp://guest:guest@127.0.0.1:5672/"
TRACKING = TrackingSettings(keys=secrets.token_urlsafe(32), base_url="https://t.bench.example.com")


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --- a minimal SMTP sink -------------------------------------------------------------------


class _SinkProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.t = transport
        self.buf = b""
        self.data = False
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, chunk: bytes) -> None:
        self.buf += chunk
        while True:
            if self.data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buf = self.buf[end + 5 :]
                self.data = False
                self.t.write(b"250 2.0.0 queued\r\n")
                continue
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            line, self.buf = self.buf[:end], self.buf[end + 2 :]
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.t.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                self.data = True
                self.t.write(b"354 go\r\n")
            elif verb == b"QUIT":
                self.t.write(b"221 bye\r\n")
                self.t.close()
            else:
                self.t.write(b"250 OK\r\n")


def run_sink(port: int) -> None:
    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(_SinkProtocol, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# --- measurements ---------------------------------------------------------------------------


def _render_and_build(templates: CampaignTemplates, tracker: Tracker | None, i: int) -> bytes:
    """One message as the sender builds it; without a tracker, as it did before tracking."""
    email, name = f"c{i}@bench.example.com", f"Customer {i}"
    variables = {"city": "Lisbon", "code": f"c{i:06d}"}
    if tracker is None:
        subject, html, text = templates.render(template_context(email, name, variables, ""))
        headers: tuple[str, ...] = ()
    else:
        links = tracker.links(i, "bench@sender.example.com")
        subject, html, text = templates.render(
            template_context(email, name, variables, links.unsubscribe_url)
        )
        assert html is not None
        assert text is not None
        html, text, headers = links.html(html, True), links.text(text, True), links.headers()
    return build_message(
        from_header="Bench <bench@sender.example.com>",
        to_header=mailbox(name, email),
        subject=subject,
        message_id=f"<{i}.x@sender.example.com>",
        html=html,
        text=text,
        headers=headers,
    )


def measure_mime(count: int) -> None:
    templates = compile_campaign(SUBJECT, HTML, TEXT)
    tracker = Tracker(TRACKING)
    per_message = {}
    for label, with_tracker in (("plain", None), ("tracked", tracker)):
        started = time.perf_counter()
        size = 0
        for i in range(count):
            size += len(_render_and_build(templates, with_tracker, i))
        per_message[label] = (time.perf_counter() - started) / count * 1e6
    # Build alone, to split template rendering from MIME assembly.
    subject, html, text = templates.render(template_context("c@x", "C", {}, ""))
    b_started = time.perf_counter()
    for i in range(count):
        build_message(
            from_header="c@x",
            to_header="c@x",
            subject=subject,
            message_id=f"<{i}.x@x>",
            html=html,
            text=text,
        )
    build = (time.perf_counter() - b_started) / count * 1e6
    _out(
        f"mime: {count} messages of ~{size // count} bytes: "
        f"{per_message['plain']:.1f} us/msg jinja render + build, "
        f"{per_message['tracked']:.1f} us/msg with tracking links and pixel, "
        f"{build:.1f} us/msg MIME build alone"
    )


async def measure_raw(port: int, count: int, concurrency: int) -> float:
    templates = compile_campaign(SUBJECT, HTML, TEXT)
    data = _render_and_build(templates, Tracker(TRACKING), 1)
    left = [count]

    async def worker() -> None:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=False, local_hostname="bench"
        )
        await smtp.connect()
        while left[0] > 0:
            left[0] -= 1
            await smtp.sendmail("a@b.example", ["c@d.example"], data)
        smtp.close()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu_used = time.perf_counter() - started, time.process_time() - cpu
    rate = count / wall
    _out(
        f"raw aiosmtplib: {rate:,.0f} msg/s over {concurrency} connections, "
        f"{cpu_used / count * 1e6:.0f} us CPU/msg"
    )
    return rate


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


async def measure_pipeline(port: int, args: argparse.Namespace) -> float:
    db_name = f"mailfleet_perf_{uuid.uuid4().hex[:8]}"
    vhost = f"mailfleet-perf-{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{db_name}"')
    dsn = urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{db_name}"))
    await migrate(dsn)
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    rabbit = urlunsplit(urlsplit(RABBIT)._replace(path=f"/{vhost}"))
    try:
        return await _pipeline(dsn, rabbit, port, args)
    finally:
        _rabbitmqctl("delete_vhost", vhost)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await admin.close()


async def _pipeline(dsn: str, rabbit: str, port: int, args: argparse.Namespace) -> float:
    count, accounts, batch = args.messages, args.accounts, args.batch
    db = await asyncpg.connect(dsn)
    owner = await db.fetchval(
        "INSERT INTO users (email, password_hash, role) VALUES ('b@x', 'x', 'admin') RETURNING id"
    )
    campaign = await db.fetchval(
        "INSERT INTO campaigns (owner_id, name, subject, html_body, text_body, status) "
        "VALUES ($1, 'bench', $2, $3, $4, 'running') RETURNING id",
        owner,
        SUBJECT,
        HTML,
        TEXT,
    )
    account_ids = [
        await db.fetchval(
            "INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, "
            "daily_limit) VALUES ('a', '127.0.0.1', $1, 'none', 'bench@sender.example.com', "
            "1000000) RETURNING id",
            port,
        )
        for _ in range(accounts)
    ]
    rows = [
        (
            campaign,
            f"c{i}@bench.example.com",
            f"Customer {i}",
            json.dumps({"city": "Lisbon", "code": f"c{i:06d}"}),
            "assigned",
            account_ids[i % accounts],
            datetime.now(UTC),
        )
        for i in range(count)
    ]
    await db.copy_records_to_table(
        "messages",
        records=rows,
        columns=[
            "campaign_id",
            "email",
            "name",
            "variables",
            "status",
            "account_id",
            "assigned_at",
        ],
    )
    await db.execute("ANALYZE")
    per_account: dict[uuid.UUID, list[int]] = {a: [] for a in account_ids}
    for row in await db.fetch("SELECT id, account_id FROM messages ORDER BY id"):
        per_account[row["account_id"]].append(row["id"])

    settings = Settings(
        postgres=PostgresSettings(dsn=dsn, pool_max=8),
        rabbit=RabbitSettings(url=rabbit),
        tracking=TRACKING,
        sender=SenderSettings(
            helo_name="bench",
            heartbeat_s=1,
            account_poll_s=2,
            flush_linger_ms=args.linger_ms,
            max_connections_per_account=args.connections,
        ),
    )
    broker = RabbitBroker(rabbit, logger=None)
    await broker.start()
    replica = SenderReplica(settings)
    await replica.start(BrokerPublisher(broker))

    commands = []
    for account, ids in per_account.items():
        for i in range(0, len(ids), batch):
            command = SendBatch(
                account_id=account, message_ids=ids[i : i + batch], dispatched_at=datetime.now(UTC)
            )
            commands.append((account, command.model_dump_json().encode()))
    connection = await aio_pika.connect(rabbit)
    channel = await connection.channel()
    exchange = await channel.get_exchange(topology.SEND.name)
    started, cpu = time.perf_counter(), time.process_time()
    for account, body in commands:
        await exchange.publish(aio_pika.Message(body), routing_key=str(account))
    while await db.fetchval("SELECT count(*) FROM messages WHERE status = 'sent'") < count:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    wall, cpu_used = time.perf_counter() - started, time.process_time() - cpu
    rate = count / wall
    _out(
        f"pipeline: {rate:,.0f} msg/s over {accounts} accounts x {args.connections} conn, "
        f"{cpu_used / count * 1e6:.0f} us CPU/msg (batches of {batch})"
    )
    from mailfleet_sender.metrics import FLUSH_SECONDS, FLUSH_SIZE, SMTP_SECONDS

    for name, metric in (
        ("flush seconds", FLUSH_SECONDS),
        ("flush size", FLUSH_SIZE),
        ("smtp seconds", SMTP_SECONDS),
    ):
        samples = {s.name: s.value for s in metric.collect()[0].samples}
        n = max(1.0, next(v for k, v in samples.items() if k.endswith("_count")))
        total = next(v for k, v in samples.items() if k.endswith("_sum"))
        _out(f"  {name}: {n:.0f} observations, mean {total / n:.4g}")
    await connection.close()
    await replica.stop()
    await broker.stop()
    await db.close()
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--accounts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--skip-raw", action="store_true")
    parser.add_argument("--linger-ms", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=1, help="per account")
    args = parser.parse_args()
    measure_mime(5000)
    port = 20025 + uuid.uuid4().int % 1000
    sink = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
        [sys.executable, "-m", "bench.sender", "--sink", str(port)]
    )
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        raw = 0.0
        if not args.skip_raw:
            raw = await measure_raw(port, args.messages, args.accounts)
        rate = await measure_pipeline(port, args)
        if raw:
            _out(f"pipeline / raw = {rate / raw:.0%}")
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sink":
        run_sink(int(sys.argv[2]))
    else:
        import uvloop

        uvloop.run(main())
