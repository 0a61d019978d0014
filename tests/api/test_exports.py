"""Exports of messages, events and campaign results: CSV and JSON Lines, safe, filtered, flat."""

import csv
import io
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stack import Stack

from .conftest import Conn, account_body, campaign_body

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
NASTY = ["=cmd|'/C calc'!A0@example.com", "+1@example.com", "-2@example.com", "@3@example.com"]


@pytest.fixture
async def results(client: httpx.AsyncClient, db: Conn, admin: dict[str, Any]) -> dict[str, Any]:
    """A campaign of 6 messages (4 with formula-like names), opens, a machine open, a click."""
    account = (
        await client.post("/api/admin/accounts", json=account_body(), headers=admin["headers"])
    ).json()["id"]
    ids: dict[str, Any] = {"account": uuid.UUID(account)}
    for name in ("spring", "other"):
        created = await client.post(
            "/api/campaigns", json=campaign_body(name=name), headers=admin["headers"]
        )
        ids[name] = uuid.UUID(created.json()["id"])
    rows = [
        ("ada@example.com", "sent", "Ada", None),
        ("bob@example.com", "sent", '=HYPERLINK("http://x")', "hard"),
        ("cy@example.com", "failed", "+Cy", None),
        ("di@example.com", "sent", "-Di", None),
        ("ed@example.com", "queued", "@Ed", None),
        ("fi@example.com", "sent", "Fi", None),
    ]
    ids["messages"] = {}
    for n, (email, status, name, bounce) in enumerate(rows):
        ids["messages"][email] = await db.fetchval(
            "INSERT INTO messages (campaign_id, email, name, status, account_id, attempts,"
            " last_code, created_at, sent_at, bounce)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            ids["spring"], email, name, status,
            None if status == "queued" else ids["account"],
            0 if status == "queued" else 1,
            {"sent": 250, "failed": 550}.get(status),
            T0 + timedelta(minutes=n),
            T0 + timedelta(minutes=n, seconds=30) if status == "sent" else None,
            bounce,
        )  # fmt: skip
    await db.execute(
        "INSERT INTO messages (campaign_id, email, status) VALUES ($1, 'zed@example.com', 'sent')",
        ids["other"],
    )
    messages = ids["messages"]
    for kind, email, data in (
        ("opened", "ada@example.com", {"ip": "203.0.113.9", "machine": False}),
        ("opened", "ada@example.com", {"ip": "203.0.113.9", "machine": False}),
        ("opened", "di@example.com", {"machine": True, "machine_reason": "apple-mpp"}),
        ("clicked", "fi@example.com", {"url": "https://example.com/x", "machine": False}),
        ("unsubscribed", "fi@example.com", {}),
    ):
        await db.execute(
            "INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
            T0 + timedelta(hours=1), kind, ids["spring"], messages[email], ids["account"],
            json.dumps(data),
        )  # fmt: skip
    return ids


async def _download(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], **params: Any
) -> httpx.Response:
    answer = await client.get(path, params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer


async def test_campaign_results_as_csv_one_row_per_message_with_its_flags(
    client: httpx.AsyncClient, results: dict[str, Any], viewer: dict[str, Any]
) -> None:
    campaign = results["spring"]
    answer = await _download(client, f"/api/campaigns/{campaign}/export", viewer["headers"])
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="campaign-{campaign}.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert [r["email"] for r in rows] == [
        "ada@example.com", "bob@example.com", "cy@example.com", "di@example.com",
        "ed@example.com", "fi@example.com",
    ]  # fmt: skip
    flags = {
        r["email"]: (r["status"], r["attempts"], r["last_code"], r["opened"], r["clicked"],
                     r["unsubscribed"], r["bounced"], r["bounce"])
        for r in rows
    }  # fmt: skip
    assert flags == {
        "ada@example.com": ("sent", "1", "250", "true", "false", "false", "false", ""),
        "bob@example.com": ("sent", "1", "250", "false", "false", "false", "true", "hard"),
        "cy@example.com": ("failed", "1", "550", "false", "false", "false", "false", ""),
        # A privacy proxy's open is not a person opening it.
        "di@example.com": ("sent", "1", "250", "false", "false", "false", "false", ""),
        "ed@example.com": ("queued", "0", "", "false", "false", "false", "false", ""),
        "fi@example.com": ("sent", "1", "250", "false", "true", "true", "false", ""),
    }


async def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(
    client: httpx.AsyncClient, results: dict[str, Any], viewer: dict[str, Any]
) -> None:
    answer = await _download(
        client, f"/api/campaigns/{results['spring']}/export", viewer["headers"]
    )
    names = [r["name"] for r in csv.DictReader(io.StringIO(answer.text))]
    assert names == ["Ada", '\'=HYPERLINK("http://x")', "'+Cy", "'-Di", "'@Ed", "Fi"]
    # JSON Lines carries values as they are: no spreadsheet reads it.
    lines = await _download(
        client, f"/api/campaigns/{results['spring']}/export", viewer["headers"], format="jsonl"
    )
    assert [json.loads(line)["name"] for line in lines.text.splitlines()][1:3] == [
        "=HYPERLINK(\"http://x\")", "+Cy",
    ]  # fmt: skip


async def test_messages_export_follows_the_list_filters_and_order(
    client: httpx.AsyncClient, results: dict[str, Any], viewer: dict[str, Any]
) -> None:
    params = {"campaign_id": str(results["spring"]), "status": "sent"}
    listed = (await client.get("/api/messages", params=params, headers=viewer["headers"])).json()
    answer = await _download(
        client, "/api/messages/export", viewer["headers"], format="jsonl", **params
    )
    assert answer.headers["content-type"] == "application/x-ndjson"
    assert answer.headers["content-disposition"] == 'attachment; filename="messages.jsonl"'
    exported = [json.loads(line) for line in answer.text.splitlines()]
    assert exported == listed["items"]
    as_csv = await _download(client, "/api/messages/export", viewer["headers"], **params)
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [int(r["id"]) for r in rows] == [m["id"] for m in listed["items"]]
    sent_window = await _download(
        client, "/api/messages/export", viewer["headers"], format="jsonl",
        sent_after=(T0 + timedelta(minutes=3)).isoformat(),
    )  # fmt: skip
    assert [json.loads(x)["email"] for x in sent_window.text.splitlines()] == [
        "fi@example.com", "di@example.com",
    ]  # fmt: skip


async def test_events_export_truncates_ips_and_filters(
    client: httpx.AsyncClient, results: dict[str, Any], viewer: dict[str, Any]
) -> None:
    answer = await _download(
        client, "/api/events/export", viewer["headers"], format="jsonl", type="opened",
        campaign_id=str(results["spring"]),
    )  # fmt: skip
    events = [json.loads(line) for line in answer.text.splitlines()]
    assert len(events) == 3
    assert {e["data"].get("ip") for e in events} == {"203.0.113.0", None}
    as_csv = await _download(client, "/api/events/export", viewer["headers"], type="clicked")
    (row,) = csv.DictReader(io.StringIO(as_csv.text))
    assert json.loads(row["data"]) == {"url": "https://example.com/x", "machine": False}


async def test_exports_refuse_bad_input_and_anonymous_callers(
    client: httpx.AsyncClient, results: dict[str, Any], viewer: dict[str, Any]
) -> None:
    for path, params in (
        ("/api/messages/export", {"format": "xlsx"}),
        ("/api/messages/export", {"status": "lost"}),
        ("/api/events/export", {"message_id": "0"}),
        (f"/api/campaigns/{uuid.uuid4()}/export", {}),
    ):
        answer = await client.get(path, params=params, headers=viewer["headers"])
        assert answer.status_code in (404, 422), (path, params)
        assert answer.headers["content-type"] == "application/problem+json"
    assert (await client.get("/api/messages/export")).status_code == 401


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_200k_row_export_streams_in_bounded_memory(
    db: Conn, database_dsn: str, rabbit_url: str, crypto_keys: str
) -> None:
    rows = 200_000
    campaign = await db.fetchval(
        """
        WITH owner AS (
            INSERT INTO users (email, password_hash, role) VALUES ('o@example.com', 'x', 'admin')
            RETURNING id
        )
        INSERT INTO campaigns (owner_id, name, subject) SELECT id, 'big', 's' FROM owner
        RETURNING id
        """
    )
    await db.execute(
        "INSERT INTO messages (campaign_id, email, name, status, last_error)"
        " SELECT $1, 'r' || g || '@example.com', repeat('n', 40), 'failed', repeat('e', 200)"
        " FROM generate_series(1, $2) g",
        campaign,
        rows,
    )
    async with Stack(
        postgres_dsn=database_dsn,
        rabbit_url=rabbit_url,
        crypto_keys=crypto_keys,
        env={"MAILFLEET_LOG_LEVEL": "WARNING"},
    ) as stack:
        api = await stack.start_api()
        async with await stack.admin_client() as http:
            # Warm: the first request loads what every later one uses.
            await http.get("/api/messages", params={"limit": 1})
            before = _rss_kib(api.pid)
            peak = before
            stop = threading.Event()

            def watch() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, _rss_kib(api.pid))
                    stop.wait(0.005)

            watcher = threading.Thread(target=watch)
            watcher.start()
            received = lines = 0
            try:
                async with http.stream(
                    "GET", f"/api/campaigns/{campaign}/export", params={"format": "csv"},
                    timeout=120,
                ) as answer:  # fmt: skip
                    assert answer.status_code == 200
                    async for chunk in answer.aiter_bytes():
                        received += len(chunk)
                        lines += chunk.count(b"\n")
            finally:
                stop.set()
                watcher.join()
    assert lines == rows + 1
    # Some 60 MB went out; holding it would grow the process by far more than this.
    assert received > 50_000_000
    assert peak - before < 30 * 1024, (before, peak)
