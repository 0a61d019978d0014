"""How fast the bouncer works through a mailbox full of bounces, against its floor.

    uv run python -m bench.bouncer [--reports 3000] [--rounds 3]

A real Dovecot (the test suite's, see tests/bouncer/servers.py; needs root) holds `reports`
RFC 3464 DSNs for messages of one account, seeded as sent in a throwaway database. Each round
puts the same DSNs into a fresh mailbox and measures, one after the other:

- floor: reading them with aioimaplib the way the bouncer does (UID SEARCH, UID FETCH in
  groups of 50, flagging them Seen), without classifying or storing anything;
- classifier: classify() alone over the same bytes, in this process;
- bouncer: BouncerReplica.poll() on the mailbox: read, classify, match, suppress, mark, record
  events and checkpoint, one transaction per message, then flag.

It prints reports per second and CPU per report (this process, and the PostgreSQL server), and
the bouncer's rate as a share of the floor's. Ratios within one run are what to compare: the
machine is shared.
"""

import argparse
import secrets
import statistics
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import uvloop
from aioimaplib import IMAP4
from mailfleet_bouncer.classify import classify
from mailfleet_bouncer.imap import Mailbox as ImapMailbox
from mailfleet_bouncer.replica import BouncerReplica
from mailfleet_bouncer.settings import BouncerSettings, Settings
from mailfleet_common.crypto import SecretBox, generate_key
from mailfleet_common.db import create_pool
from mailfleet_common.settings import (
    CryptoSettings,
    PostgresSettings,
    RabbitSettings,
    TrackingSettings,
)
from pydantic import BaseModel

from bench.scratch import Scratch, cpu_seconds, server_pids
from tests.bouncer import rows
from tests.bouncer.servers import Dovecot, Mailbox, make_servers_dir


class _Discard:
    async def publish_event(self, event: BaseModel, routing_key: str) -> None:
        """Nothing is published in this benchmark: poll() does not publish feedback."""


@dataclass
class Reading:
    seconds: float
    cpu_self: float
    cpu_postgres: float


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def _measure(work: Awaitable[object]) -> Reading:
    postgres = server_pids()["postgres"]  # now: backends fork per connection
    started, own, pg = time.perf_counter(), time.process_time(), _cpu(postgres)
    await work
    return Reading(time.perf_counter() - started, time.process_time() - own, _cpu(postgres) - pg)


async def _append(mailbox: Mailbox, messages: list[bytes]) -> None:
    client = IMAP4(mailbox.host, mailbox.imap_port)
    await client.wait_hello_from_server()
    await client.login(mailbox.address, mailbox.password)
    for raw in messages:
        await client.append(raw, mailbox="INBOX")
    await client.logout()


async def _read_floor(mailbox: Mailbox, batch: int) -> int:
    imap = await ImapMailbox.connect(
        mailbox.host, mailbox.imap_port, "none", mailbox.address, mailbox.password, timeout_s=60
    )
    try:
        await imap.select("INBOX")
        uids = await imap.uids_after(0)
        read = 0
        for start in range(0, len(uids), batch):
            group = uids[start : start + batch]
            read += len(await imap.fetch(group, 5 * 1024 * 1024))
            await imap.mark_seen(group)
        return read
    finally:
        await imap.close()


async def run(reports: int, rounds: int) -> None:
    dovecot = Dovecot(make_servers_dir() / "dovecot")
    dovecot.start()
    keys = generate_key()
    box = SecretBox([keys])
    try:
        async with Scratch() as scratch:
            settings = Settings(
                postgres=PostgresSettings(dsn=scratch.dsn, pool_min=1, pool_max=4),
                rabbit=RabbitSettings(url=scratch.rabbit_url),
                crypto=CryptoSettings(keys=keys),
                tracking=TrackingSettings(keys=secrets.token_urlsafe(32)),
                bouncer=BouncerSettings(rate_min_sends=10**9),  # never pause mid-benchmark
            )
            floors, bouncers, classify_us = [], [], []
            pool = await create_pool(settings.postgres)
            for round_ in range(rounds):
                mailbox = dovecot.create_mailbox("bench")
                async with pool.acquire() as conn:
                    account = await rows.insert_imap_account(conn, box, mailbox)
                    campaign = await rows.insert_campaign(conn)
                    emails = [f"r{i}-{round_}@example.net" for i in range(reports)]
                    sent = await rows.insert_sent(conn, campaign, account, emails)
                messages = [rows.dsn(e, h) for e, (_, h) in zip(emails, sent, strict=True)]
                await _append(mailbox, messages)

                floor = await _measure(_read_floor(mailbox, 50))
                await _reset_seen(mailbox)

                started = time.process_time()
                for raw in messages:
                    classify(raw)
                classify_us.append((time.process_time() - started) / reports * 1e6)

                replica = BouncerReplica(settings)
                await replica.open(_Discard())
                try:
                    bouncer = await _measure(replica.poll(account))
                finally:
                    await replica.stop()
                async with pool.acquire() as conn:
                    done = await conn.fetchval(
                        "SELECT count(*) FROM inbound_reports WHERE account_id = $1", account
                    )
                assert done == reports, f"{done} of {reports} reports processed"
                floors.append(floor)
                bouncers.append(bouncer)
                print(
                    f"round {round_ + 1}: floor {reports / floor.seconds:,.0f}/s, "
                    f"bouncer {reports / bouncer.seconds:,.0f}/s, "
                    f"ratio {floor.seconds / bouncer.seconds:.2f}"
                )
            await pool.close()
    finally:
        dovecot.stop()

    def per_report_us(value: float) -> float:
        return value / reports * 1e6

    print(f"\n{reports} DSNs per round, {rounds} rounds (medians)")
    print(f"{'':12} {'reports/s':>10} {'CPU/report here':>16} {'postgres/report':>16}")
    for name, readings in (("floor", floors), ("bouncer", bouncers)):
        rate = statistics.median(reports / r.seconds for r in readings)
        own = statistics.median(per_report_us(r.cpu_self) for r in readings)
        pg = statistics.median(per_report_us(r.cpu_postgres) for r in readings)
        print(f"{name:12} {rate:>10,.0f} {own:>13,.0f} µs {pg:>13,.0f} µs")
    print(
        f"{'classify':12} {1e6 / statistics.median(classify_us):>10,.0f} "
        f"{statistics.median(classify_us):>13,.0f} µs"
    )
    ratio = statistics.median(f.seconds / b.seconds for f, b in zip(floors, bouncers, strict=True))
    print(f"\nbouncer / floor (rate): {ratio:.2f}")


async def _reset_seen(mailbox: Mailbox) -> None:
    client = IMAP4(mailbox.host, mailbox.imap_port)
    await client.wait_hello_from_server()
    await client.login(mailbox.address, mailbox.password)
    await client.select("INBOX")
    await client.uid("store", "1:*", "-FLAGS.SILENT (\\Seen)")
    await client.logout()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # uvloop, as the bouncer runs when served (mailfleet_bouncer.main).
    uvloop.run(run(args.reports, args.rounds))


if __name__ == "__main__":
    main()
