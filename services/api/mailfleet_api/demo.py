"""``mailfleet demo``: a campaign sent end to end through the running API, with live progress."""

import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Statuses a message does not leave by itself.
FINAL = ("sent", "failed", "cancelled", "uncertain")


@dataclass(frozen=True)
class DemoOptions:
    api_url: str
    email: str
    password: str
    smtp_host: str
    smtp_port: int
    smtp_tls: str
    accounts: int
    recipients: int
    timeout: float
    poll_interval: float = 0.5


class DemoError(Exception):
    """The API refused a step of the demo."""


def _check(response: httpx.Response, what: str) -> Any:
    if response.is_error:
        raise DemoError(f"{what}: HTTP {response.status_code} {response.text[:500]}")
    return response.json()


def _create_accounts(client: httpx.Client, options: DemoOptions, run: str) -> list[str]:
    ids = []
    for n in range(1, options.accounts + 1):
        body = {
            "name": f"demo {run} #{n}",
            "smtp_host": options.smtp_host,
            "smtp_port": options.smtp_port,
            "smtp_tls": options.smtp_tls,
            "smtp_username": f"demo{n}",
            "smtp_password": f"demo-password-{n}",
            "from_email": f"sender{n}@demo.example",
            "from_name": f"Demo sender {n}",
            "daily_limit": options.recipients,
            "min_gap_ms": 0,
        }
        ids.append(_check(client.post("/api/admin/accounts", json=body), "create account")["id"])
    return ids


def _enqueue(client: httpx.Client, campaign_id: str, count: int, run: str) -> int:
    accepted = 0
    for start in range(0, count, 10_000):
        recipients = [
            {"email": f"demo-{run}-{i}@demo.example", "name": f"Reader {i}",
             "variables": {"n": i}}
            for i in range(start, min(count, start + 10_000))
        ]  # fmt: skip
        result = _check(
            client.post(
                "/api/queue/enqueue",
                json={"campaign_id": campaign_id, "recipients": recipients},
                headers={"Idempotency-Key": f"demo-{run}-{start}"},
            ),
            "enqueue",
        )
        accepted += result["accepted"]
    return accepted


def _summary(campaign: dict[str, Any], accounts: list[dict[str, Any]], took: float) -> Table:
    table = Table(title=f"Campaign {campaign['name']} ({campaign['status']}), {took:.1f} s")
    table.add_column("status")
    table.add_column("messages", justify="right")
    for status, n in sorted(campaign["messages"].items()):
        table.add_row(status, str(n))
    table.add_section()
    for account in accounts:
        today = account["today"]
        used = f"{today['sent']}/{today['effective_limit']}"
        table.add_row(f"{account['name']} sent today", used)
    return table


def run_demo(options: DemoOptions, console: Console | None = None) -> bool:
    """Run the demo; True if every message ended sent or failed before the timeout."""
    console = console or Console()
    run = uuid.uuid4().hex[:6]
    with httpx.Client(base_url=options.api_url, timeout=60) as client:
        try:
            token = _check(
                client.post(
                    "/api/admin/login", json={"email": options.email, "password": options.password}
                ),
                "login",
            )["access_token"]
            client.headers["Authorization"] = f"Bearer {token}"
            account_ids = _create_accounts(client, options, run)
            console.print(
                f"created {len(account_ids)} accounts -> "
                f"{options.smtp_host}:{options.smtp_port} ({options.smtp_tls})"
            )
            campaign = _check(client.post("/api/campaigns", json={
                "name": f"demo {run}",
                "subject": "Hello {{ name }}",
                "text_body": "Hi {{ name }}, this is message {{ n }} of the mailfleet demo.\n",
                "html_body": "<p>Hi {{ name }}, this is message <b>{{ n }}</b>.</p>",
                "account_ids": account_ids,
            }), "create campaign")  # fmt: skip
            accepted = _enqueue(client, campaign["id"], options.recipients, run)
            console.print(f"campaign {campaign['id']}: {accepted} recipients queued")
            _check(client.post(f"/api/campaigns/{campaign['id']}/start"), "start campaign")
            started = time.monotonic()
            delivered_in = 0.0
            with Progress(
                TextColumn("[bold]delivering"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
            ) as progress:  # fmt: skip
                task = progress.add_task("send", total=accepted, detail="")
                while True:
                    campaign = _check(
                        client.get(f"/api/campaigns/{campaign['id']}"), "campaign status"
                    )
                    counts = campaign["messages"]
                    done = sum(counts.get(status, 0) for status in FINAL)
                    detail = " ".join(f"{s}={n}" for s, n in sorted(counts.items()))
                    progress.update(task, completed=done, detail=detail)
                    now = time.monotonic()
                    if done >= accepted:
                        delivered_in = delivered_in or now - started
                        # The dispatcher marks the campaign completed on its next sweep.
                        if campaign["status"] != "running" or now - started > delivered_in + 5:
                            break
                    elif now - started > options.timeout:
                        break
                    time.sleep(options.poll_interval)
            accounts = [
                _check(client.get(f"/api/admin/accounts/{a}"), "account") for a in account_ids
            ]
        except (DemoError, httpx.HTTPError) as exc:
            console.print(f"[red]demo failed: {exc}")
            return False
    console.print(_summary(campaign, accounts, delivered_in or time.monotonic() - started))
    if done < accepted:
        console.print(f"[red]timed out: {accepted - done} messages still not delivered")
        return False
    return True
