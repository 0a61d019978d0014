"""The ``mailfleet-sink`` command: listen, capture every message, flush and exit on a signal."""

import argparse
import asyncio
import logging
import signal
import socket
from collections.abc import Sequence
from pathlib import Path

import uvloop

from mailfleet_sink.capture import Accepted, Maildir, RecordFile
from mailfleet_sink.protocol import SmtpSession

log = logging.getLogger("mailfleet_sink")


class Capture:
    """Hands each accepted message to the record file and the maildir, whichever are set."""

    def __init__(self, record: RecordFile | None, maildir: Maildir | None) -> None:
        self.record = record
        self.maildir = maildir
        self.accepted = 0

    def __call__(self, message: Accepted) -> None:
        self.accepted += 1
        if self.record is not None:
            self.record.add(message)
        if self.maildir is not None:
            self.maildir.add(message)

    def close(self) -> None:
        if self.record is not None:
            self.record.close()


async def start_server(
    host: str, port: int, capture: Capture, defer_rate: float = 0.0
) -> asyncio.Server:
    """A listening SMTP server handing what it accepts to `capture` (port 0: any free one)."""
    hostname = socket.gethostname()
    return await asyncio.get_running_loop().create_server(
        lambda: SmtpSession(hostname, capture, defer_rate), host, port, reuse_address=True
    )


async def serve(
    host: str, port: int, capture: Capture, stop: asyncio.Event, defer_rate: float = 0.0
) -> None:
    """Accept SMTP sessions on host:port until `stop` is set."""
    server = await start_server(host, port, capture, defer_rate)
    bound = ", ".join("{}:{}".format(*sock.getsockname()[:2]) for sock in server.sockets)
    log.info("listening on %s", bound)
    async with server:
        await stop.wait()
    log.info("stopping after %d messages", capture.accepted)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mailfleet-sink",
        description="Accept every SMTP message and record its Message-ID and recipients.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--record", type=Path, help="append one JSON line per message to this file")
    parser.add_argument("--maildir", type=Path, help="also store each message in this maildir")
    parser.add_argument(
        "--flush-interval", type=float, default=0.5, help="seconds between record writes"
    )
    parser.add_argument(
        "--defer-rate",
        type=float,
        default=0.0,
        help="answer 451 after DATA to this fraction of messages, at random (default 0)",
    )
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    record = None if args.record is None else RecordFile(args.record, args.flush_interval)
    maildir = None if args.maildir is None else Maildir(args.maildir)
    capture = Capture(record, maildir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await serve(args.host, args.port, capture, stop, args.defer_rate)
    finally:
        capture.close()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvloop.run(_run(parse_args(argv)))
