"""The client commands of `mailfleet` (campaigns, enqueue, messages, events) against a running API.

The API runs as a process over the test database; the commands run in this process through
typer's CliRunner (or as a process, to be interrupted), with an API key made by the CLI.
"""

import asyncio
import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from mailfleet_api.cli import app
from typer.testing import CliRunner, Result

from tests.e2e.conftest import FAST_ENV, create_account
from tests.stack import Stack, executable, free_port

from .conftest import account_body

# The routes the tests need but that may not be in this API yet: their paths as patterns.
MESSAGE_PATH = r"/api/messages/\{[a-z_]+\}"
FEED_PATH = r"/api/events/feed"


@dataclass
class Api:
    stack: Stack
    url: str
    key: str
    account_id: str
    paths: set[str]
    dsn: str

    @property
    def env(self) -> dict[str, str]:
        # Wide enough for ids unbroken in tables (rich folds them at 80 columns off a terminal).
        return {"MAILFLEET_API_URL": self.url, "MAILFLEET_API_KEY": self.key, "COLUMNS": "250"}

    def run(self, *args: str, env: dict[str, str] | None = None, stdin: str = "") -> Result:
        return CliRunner().invoke(app, list(args), env={**self.env, **(env or {})}, input=stdin)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def offers(self, pattern: str) -> bool:
        return any(re.fullmatch(pattern, path) for path in self.paths)


@pytest.fixture(scope="module")
async def api(database_dsn: str, rabbit_url: str, crypto_keys: str) -> AsyncIterator[Api]:
    async with Stack(
        postgres_dsn=database_dsn, rabbit_url=rabbit_url, crypto_keys=crypto_keys, env=FAST_ENV
    ) as stack:
        server = await stack.start_api()
        email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
        await stack.create_admin(email, "plum tractor violet 42")
        output = await stack.run_cli("create-api-key", "--email", email, "--name", "cli tests")
        key = output.strip().splitlines()[-1]
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
            response = await client.post(
                "/api/admin/accounts", json=account_body(name=f"cli-{uuid.uuid4().hex[:6]}")
            )
            assert response.status_code == 201, response.text
            paths = set((await client.get("/openapi.json")).json()["paths"])
        yield Api(stack, server.url, key, response.json()["id"], paths, database_dsn)


def _create_campaign(api: Api, tmp_path: Path, *extra: str) -> str:
    body = tmp_path / "body.txt"
    body.write_text("Hi {{ name }}, your code is {{ code }}.")
    campaign = api.json(
        "campaigns", "create", "--name", "cli", "--subject", "Hello {{ name }}",
        "--text", str(body), *extra,
    )  # fmt: skip
    campaign_id: str = campaign["id"]
    return campaign_id


def test_a_campaign_is_created_listed_shown_started_paused_and_cancelled(
    api: Api, tmp_path: Path
) -> None:
    campaign_id = _create_campaign(api, tmp_path, "--account", api.account_id, "--no-tracking")
    shown = api.json("campaigns", "show", campaign_id)
    assert (shown["status"], shown["tracking"], shown["account_ids"]) == (
        "draft", False, [api.account_id]
    )  # fmt: skip
    assert campaign_id in [c["id"] for c in api.json("campaigns", "list", "--all")["items"]]
    assert [c["id"] for c in api.json("campaigns", "list", "--status", "draft")["items"]]
    listed = api.run("campaigns", "list", "--limit", "500")
    assert listed.exit_code == 0, listed.output
    assert campaign_id in listed.stdout
    table = api.run("campaigns", "show", campaign_id)
    assert table.exit_code == 0, table.output
    assert "messages" in table.stdout
    assert "pool.remaining_today" in table.stdout

    assert api.json("campaigns", "start", campaign_id)["status"] == "running"
    paused = api.run("campaigns", "pause", campaign_id)
    assert paused.exit_code == 0, paused.output
    assert paused.stdout.strip() == f"campaign {campaign_id} is paused"
    assert api.json("campaigns", "start", campaign_id)["status"] == "running"
    refused = api.run("campaigns", "cancel", campaign_id, stdin="n\n")
    assert refused.exit_code == 1
    assert api.json("campaigns", "show", campaign_id)["status"] == "running"
    cancelled = api.json("campaigns", "cancel", campaign_id, "--yes")
    assert cancelled["campaign"]["status"] == "cancelled"

    again = api.run("campaigns", "pause", campaign_id)
    assert again.exit_code == 1
    assert "error 409 Conflict: cannot pause a cancelled campaign" in again.stderr


def _write_recipients(path: Path, count: int) -> list[list[str]]:
    rows = [[f"person{i}@example.com", f"Person {i}", f"c{i}", "Lyon"] for i in range(count)]
    rows[9][0] = "not-an-address"
    rows[19][0] = rows[0][0]  # a duplicate of the first
    rows[29] = [rows[29][0], "Short Row"]  # two fields where the header has four
    rows[4][2] = 'quoted, with "quotes"\nand a line break'
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["email", "name", "code", "city"])
        writer.writerows(rows)
    return rows


def _enqueue(api: Api, path: Path, campaign_id: str, *extra: str) -> dict[str, Any]:
    result: dict[str, Any] = api.json(
        "enqueue", str(path), "--campaign", campaign_id, "--batch-size", "500", *extra
    )
    return result


def test_enqueue_streams_a_csv_in_batches_and_reports_rejected_rows(
    api: Api, tmp_path: Path
) -> None:
    campaign_id = _create_campaign(api, tmp_path)
    path = tmp_path / "recipients.csv"
    _write_recipients(path, 3000)
    first = _enqueue(api, path, campaign_id)
    assert (first["rows"], first["batches"], first["accepted"]) == (3000, 6, 2997)
    # Record n is on line n + 1 (the header is line 1), one more after record 5's line break.
    assert [(r["row"], r["line"], r["reason"][:15]) for r in first["rejected"]] == [
        (10, 12, "invalid address"),
        (20, 22, "duplicate in re"),
        (30, 32, "2 fields where "),
    ]
    assert first["rejected"][2]["reason"] == "2 fields where the header has 4"
    assert api.json("campaigns", "show", campaign_id)["total_messages"] == 2997

    rerun = api.run("enqueue", str(path), "--campaign", campaign_id, "--batch-size", "500")
    assert rerun.exit_code == 0, rerun.output
    assert "3000 rows in 6 batches, 2997 accepted, 3 rejected" in rerun.stdout
    assert "invalid address" in rerun.stdout
    assert api.json("campaigns", "show", campaign_id)["total_messages"] == 2997


def test_an_interrupted_enqueue_goes_on_where_it_stopped(api: Api, tmp_path: Path) -> None:
    campaign_id = _create_campaign(api, tmp_path)
    full = tmp_path / "recipients.csv"
    rows = _write_recipients(full, 2000)
    # The first two batches of the same file, as a run stopped after them had sent.
    partial = tmp_path / "stopped" / full.name
    partial.parent.mkdir()
    with partial.open("w", newline="") as file:
        csv.writer(file).writerows([["email", "name", "code", "city"], *rows[:1000]])
    assert _enqueue(api, partial, campaign_id)["accepted"] == 997

    resumed = _enqueue(api, full, campaign_id)
    assert resumed["accepted"] == 1997  # the first two batches answered from their keys
    assert [r["row"] for r in resumed["rejected"]] == [10, 20, 30]
    assert api.json("campaigns", "show", campaign_id)["total_messages"] == 1997


def test_enqueue_refuses_a_file_without_an_email_column(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("address,name\nsomeone@example.com,Someone\n")
    result = api.run("enqueue", str(path), "--campaign", str(uuid.uuid4()))
    assert result.exit_code == 2
    assert "the header has no email column: address, name" in result.stderr


def test_api_errors_are_shown_with_a_nonzero_exit(api: Api, tmp_path: Path) -> None:
    unknown = str(uuid.uuid4())
    missing = api.run("campaigns", "show", unknown)
    assert missing.exit_code == 1
    assert f"error 404 Not Found: no campaign {unknown}" in missing.stderr
    assert missing.stdout == ""
    as_json = api.run("campaigns", "show", unknown, "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stderr)["status"] == 404

    wrong_key = "mf_" + "x" * 40
    refused = api.run("campaigns", "list", env={"MAILFLEET_API_KEY": wrong_key})
    assert refused.exit_code == 1
    assert "error 401 Unauthorized" in refused.stderr
    assert wrong_key not in refused.output
    no_key = api.run("campaigns", "list", env={"MAILFLEET_API_KEY": ""})
    assert no_key.exit_code == 2
    assert "--api-key or MAILFLEET_API_KEY" in no_key.stderr

    invalid = api.run("campaigns", "create", "--name", "x", "--subject", "s")
    assert invalid.exit_code == 1
    assert "error 422" in invalid.stderr
    enqueue = tmp_path / "one.csv"
    enqueue.write_text("email\nsomeone@example.com\n")
    nowhere = api.run("enqueue", str(enqueue), "--campaign", unknown)
    assert nowhere.exit_code == 1
    assert f"no campaign {unknown}" in nowhere.stderr
    assert "stopped after 0 batches" in nowhere.stderr


def test_an_unreachable_api_is_a_clear_message(api: Api) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = api.run("campaigns", "list", "--api-url", url)
    assert result.exit_code == 3
    assert f"cannot reach the API at {url}" in result.stderr
    assert "Traceback" not in result.output
    assert api.key not in result.output


async def test_messages_show_gives_a_message_with_its_history(api: Api, tmp_path: Path) -> None:
    assert api.offers(MESSAGE_PATH)
    campaign_id = _create_campaign(api, tmp_path)
    path = tmp_path / "one.csv"
    path.write_text("email,name,code\nreader@example.com,Reader,c1\n")
    assert _enqueue(api, path, campaign_id)["accepted"] == 1
    conn = await asyncpg.connect(api.dsn)
    try:
        message_id = await conn.fetchval(
            "SELECT id FROM messages WHERE campaign_id = $1", uuid.UUID(campaign_id)
        )
    finally:
        await conn.close()

    message = api.json("messages", "show", str(message_id))
    assert str(message["id"]) == str(message_id)
    table = api.run("messages", "show", str(message_id))
    assert table.exit_code == 0, table.output
    assert "reader@example.com" in table.stdout
    unknown = api.run("messages", "show", "987654321")
    assert unknown.exit_code == 1
    assert "error 404" in unknown.stderr


async def test_events_tail_follows_new_events_as_json_lines(api: Api, tmp_path: Path) -> None:
    assert api.offers(FEED_PATH)
    sink = await api.stack.start_sink()
    await api.stack.start_dispatcher()
    await api.stack.start_sender()
    headers = {"Authorization": f"Bearer {api.key}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers) as client:
        account = await create_account(client, f"tail-{uuid.uuid4().hex[:6]}", sink.port)
        # Where the feed ends now: a tail started from "now" could miss what the start sends
        # while the process is still starting.
        response = await client.get(FEED_PATH)
        assert response.status_code == 200, response.text
        since = response.json()["next_cursor"]
    campaign_id = _create_campaign(api, tmp_path, "--account", account["id"])
    path = tmp_path / "three.csv"
    path.write_text("email,code\na@example.com,1\nb@example.com,2\nc@example.com,3\n")
    assert _enqueue(api, path, campaign_id)["accepted"] == 3
    assert api.json("campaigns", "start", campaign_id)["status"] == "running"

    with _tail(
        api, "--json", "--type", "sent", "--campaign", campaign_id, "--count", "3",
        "--since", since, "--interval", "0.2",
    ) as tail:  # fmt: skip
        stdout, stderr = await asyncio.to_thread(tail.communicate, timeout=60)
    assert tail.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    assert len(events) == 3
    assert {(e["type"], e["campaign_id"]) for e in events} == {("sent", campaign_id)}
    assert len({e["message_id"] for e in events}) == 3


@contextlib.contextmanager
def _tail(api: Api, *args: str) -> Iterator["subprocess.Popen[str]"]:
    """`mailfleet events tail` as a process, killed at the end if still running."""
    with subprocess.Popen(
        [executable("mailfleet"), "events", "tail", *args],
        env={**os.environ, **api.env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


async def test_events_tail_stops_cleanly_on_ctrl_c(api: Api) -> None:
    assert api.offers(FEED_PATH)
    with _tail(api) as tail:
        assert tail.stderr is not None
        first = await asyncio.wait_for(asyncio.to_thread(tail.stderr.readline), timeout=30)
        assert "following events" in first
        tail.send_signal(signal.SIGINT)
        _, stderr = await asyncio.to_thread(tail.communicate, timeout=30)
    assert tail.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "mailfleet events tail --since " in stderr
