"""A real Prometheus scrapes a real running stack: every dashboard query has data, every alert
expression evaluates.

The stack (api, dispatcher, sender, tracker, bouncer as processes), RabbitMQ's built-in
Prometheus endpoint and postgres_exporter are scraped every second while a campaign goes out
through the SMTP peer (a 550, a 451 then accepted, the rest accepted), a message is opened,
clicked and unsubscribed from, a DSN for one of them lands in a real Dovecot mailbox that the
bouncer reads, another account's mailbox cannot be reached, and an operator pauses an account.
"""

import asyncio
import shutil
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.bouncer.rows import dsn
from tests.bouncer.servers import Dovecot, ServerError, make_servers_dir
from tests.e2e.conftest import FAST_ENV, create_account, start_campaign, wait_until
from tests.e2e.test_tracking import BROWSER, links_of, part
from tests.ops.monitoring import (
    ALERTS,
    alert_rules,
    has_data,
    panel_queries,
    postgres_exporter,
    prometheus,
    prometheus_config,
    query,
)
from tests.smtp_peer import SmtpPeer
from tests.stack import Stack, free_port

pytestmark = pytest.mark.slow

RABBITMQ_METRICS = "127.0.0.1:15692"  # rabbitmq_prometheus, enabled by ensure_prometheus
MONITORING_ENV = {
    **FAST_ENV,
    "MAILFLEET_DISPATCHER__FLEET_GAUGES_S": "1",
    "MAILFLEET_BOUNCER__POLL_S": "0.5",
    "MAILFLEET_BOUNCER__REBALANCE_S": "1",
    "MAILFLEET_TRACKER__MACHINE_WINDOW_S": "0",
}
GOOD = [f"reader{i}@example.com" for i in range(6)]
REFUSED = "reject-1@example.com"  # 550: failed
DEFERRED = "tempfail1-1@example.com"  # 451 once, then accepted


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    root = make_servers_dir()
    server = Dovecot(root / "dovecot")
    try:
        server.start()
    except ServerError as error:
        server.stop()
        pytest.fail(str(error), pytrace=False)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def closed_port() -> int:
    return free_port()  # nothing listens there: the bouncer's connection is refused


def message_of(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


async def engage(tracker_url: str, message: EmailMessage) -> None:
    """Open, click and unsubscribe (one-click) from a delivered message, through the tracker."""
    links = links_of(part(message, "html"))
    pixel = next(src for src in links.images if "/track/open/" in src)
    click = next(href for href in links.hrefs if "/track/click/" in href)
    unsubscribe = next(
        value.strip(" <>")
        for value in str(message["List-Unsubscribe"]).split(",")
        if "/unsubscribe/" in value
    )
    async with httpx.AsyncClient(base_url=tracker_url, headers=BROWSER, timeout=10) as client:
        assert (await client.get(urlsplit(pixel).path)).status_code == 200
        assert (await client.get(urlsplit(click).path)).status_code == 302
        response = await client.post(
            urlsplit(unsubscribe).path, data={"List-Unsubscribe": "One-Click"}
        )
        assert response.status_code == 200, response.text


async def test_every_panel_has_data_and_every_alert_evaluates_against_a_running_stack(
    db: Any, database_dsn: str, rabbit_url: str, crypto_keys: str, dovecot: Dovecot,
    smtp_peer: SmtpPeer, tmp_path: Path,
) -> None:  # fmt: skip
    async with Stack(
        postgres_dsn=database_dsn, rabbit_url=rabbit_url, crypto_keys=crypto_keys,
        env=MONITORING_ENV, workdir=tmp_path / "stack",
    ) as stack:  # fmt: skip
        api = await stack.start_api()
        dispatcher = await stack.start_dispatcher()
        sender = await stack.start_sender()
        tracker = await stack.start_tracker()
        bouncer = await stack.start_bouncer()
        exporter = postgres_exporter(tmp_path, database_dsn)
        stack.services.append(exporter)
        await exporter.start()
        jobs = {
            "mailfleet-api": [f"127.0.0.1:{api.port}"],
            "mailfleet-dispatcher": [f"127.0.0.1:{dispatcher.port}"],
            "mailfleet-sender": [f"127.0.0.1:{sender.port}"],
            "mailfleet-tracker": [f"127.0.0.1:{tracker.port}"],
            "mailfleet-bouncer": [f"127.0.0.1:{bouncer.port}"],
            "rabbitmq": [RABBITMQ_METRICS],
            "postgres": [f"127.0.0.1:{exporter.port}"],
        }
        server = prometheus(tmp_path, prometheus_config(jobs, [ALERTS]))
        stack.services.append(server)
        await server.start()
        # Traffic only once every target has been scraped: a counter's first sample must
        # come before its first increase, or rate() sees none.
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as prom:

            async def scraped() -> bool:
                return len(await query(prom, "up == 1")) == len(jobs)

            await wait_until(scraped, 30, "Prometheus scraping every target")

        mailbox = dovecot.create_mailbox("sender")
        async with await stack.admin_client() as client:
            imap = {"host": "127.0.0.1", "tls": "none", "username": mailbox.address}
            read = await create_account(
                client, "watched", smtp_peer.port,
                imap={**imap, "port": dovecot.imap_port, "password": mailbox.password},
            )  # fmt: skip
            unreachable = await create_account(
                client, "unreachable", smtp_peer.port,
                imap={**imap, "port": closed_port(), "password": "secret"},
            )  # fmt: skip
            await start_campaign(
                client, [read["id"], unreachable["id"]], [*GOOD, REFUSED, DEFERRED],
                html_body='<p>Hi {{ name }}, <a href="https://example.com/offer">see</a>.</p>',
            )  # fmt: skip

            async def delivered() -> bool:
                return len(smtp_peer.handler.received) >= len(GOOD) + 1

            await wait_until(delivered, 30, "the campaign delivered")
            messages = [message_of(received.raw) for received in smtp_peer.handler.received]
            await engage(tracker.url, messages[0])
            await engage(tracker.url, messages[1])
            # A DSN for a message the watched account sent, delivered into its mailbox.
            bounced = next(m for m in messages if m["From"].addresses[0].username == "watched")
            report = dsn(
                bounced["To"].addresses[0].addr_spec, str(bounced["Message-ID"]),
                sender=mailbox.address,
            )  # fmt: skip
            await asyncio.to_thread(deliver_over_lmtp, dovecot.lmtp_port, mailbox.address, report)
            response = await client.patch(
                f"/api/admin/accounts/{unreachable['id']}", json={"status": "paused"}
            )
            assert response.status_code == 200, response.text

        # Every query of every panel, until each has data (the series appear as scrapes and
        # the one-second fleet gauges catch up with what happened above).
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as prom:
            waiting = panel_queries()
            deadline = time.monotonic() + 60
            while waiting and time.monotonic() < deadline:
                waiting = [q for q in waiting if not has_data(await query(prom, q[2]))]
                if waiting:
                    await asyncio.sleep(1)
            if waiting:
                counts = {q[2]: await query(prom, q[2]) for q in waiting}
                pytest.fail(f"panels without data (their results): {counts}")

            for rule in alert_rules():
                await query(prom, rule["expr"])  # raises with Prometheus's error if any
            # Prometheus evaluates the rule files itself too: none may be in error.
            response = await prom.get("/api/v1/rules")
            groups = response.json()["data"]["groups"]
            evaluated = {
                rule["name"]: (rule["health"], rule.get("lastError", ""))
                for group in groups
                for rule in group["rules"]
            }
            assert set(evaluated) == {rule["alert"] for rule in alert_rules()}
            assert all(health == ("ok", "") for health in evaluated.values()), evaluated

            # What happened above makes alerts pending (or firing): the operator's pause, and
            # the mailbox that cannot be reached.
            async def alerted() -> bool:
                response = await prom.get("/api/v1/alerts")
                active = {
                    (alert["labels"]["alertname"], alert["labels"].get("account", ""))
                    for alert in response.json()["data"]["alerts"]
                }
                return {
                    ("MailfleetAccountPaused", unreachable["id"]),
                    ("MailfleetBouncerMailboxErrors", ""),
                } <= active

            await wait_until(alerted, 30, "the paused account and mailbox errors alerted")


def deliver_over_lmtp(port: int, recipient: str, raw: bytes) -> None:
    with smtplib.LMTP("127.0.0.1", port, timeout=10) as lmtp:
        lmtp.sendmail("MAILER-DAEMON@mta.example.net", [recipient], raw)
