"""Uncertain messages: the operator's list, resolving them as sent or to resend, the record."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from mailfleet_api.cli import app
from typer.testing import CliRunner

from .conftest import Conn

URL = "/api/messages/uncertain"
NOW = datetime.now(UTC).replace(microsecond=0)


async def add_account(db: Conn, name: str) -> uuid.UUID:
    account_id: uuid.UUID = await db.fetchval(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit)
        VALUES ($1, 'smtp.example.com', 587, 'starttls', 'news@example.com', 100)
        RETURNING id
        """,
        name,
    )
    return account_id


async def add_message(
    db: Conn, campaign_id: str, account_id: uuid.UUID, n: int, status: str = "uncertain"
) -> int:
    """A message as a sender that died mid-delivery leaves it, flagged `n` minutes ago."""
    message_id: int = await db.fetchval(
        """
        INSERT INTO messages (campaign_id, email, status, account_id, attempts, assigned_at,
                              message_id, sender_replica, updated_at)
        VALUES ($1, $2, $3, $4, 1, $5, $6, 'replica-a', $5)
        RETURNING id
        """,
        uuid.UUID(campaign_id),
        f"person{n}@example.org",
        status,
        account_id,
        NOW - timedelta(minutes=n),
        f"<{n}.abc@news.example.com>",
    )
    return message_id


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def test_viewers_list_uncertain_messages_newest_first_a_page_at_a_time(
    client: httpx.AsyncClient,
    db: Conn,
    campaign_id: str,
    viewer: dict[str, Any],
) -> None:
    first, second = await add_account(db, "first"), await add_account(db, "second")
    made = [await add_message(db, campaign_id, first if n % 2 else second, n) for n in range(5)]
    await add_message(db, campaign_id, first, 9, status="sent")

    assert (await client.get(URL)).status_code == 401
    assert ids(await client.get(URL, headers=viewer["headers"])) == made
    page = await client.get(URL, params={"limit": 2}, headers=viewer["headers"])
    assert ids(page) == made[:2]
    rest = await client.get(
        URL, params={"limit": 10, "cursor": page.json()["next_cursor"]}, headers=viewer["headers"]
    )
    assert ids(rest) == made[2:]
    assert rest.json()["next_cursor"] is None
    by_account = await client.get(URL, params={"account_id": str(first)}, headers=viewer["headers"])
    assert ids(by_account) == [made[1], made[3]]
    older = await client.get(
        URL,
        params={"flagged_before": (NOW - timedelta(minutes=2, seconds=30)).isoformat()},
        headers=viewer["headers"],
    )
    assert ids(older) == made[3:]
    item = (await client.get(URL, headers=viewer["headers"])).json()["items"][0]
    assert item["message_id"] == "<0.abc@news.example.com>"
    assert item["sender_replica"] == "replica-a"
    assert item["flagged_at"] == NOW.isoformat().replace("+00:00", "Z")


async def test_an_operator_marks_messages_sent_and_who_did_it_and_when_is_recorded(
    client: httpx.AsyncClient,
    db: Conn,
    campaign_id: str,
    viewer: dict[str, Any],
    operator: dict[str, Any],
) -> None:
    account = await add_account(db, "first")
    arrived = [await add_message(db, campaign_id, account, n) for n in range(2)]
    other = await add_message(db, campaign_id, account, 5)
    delivered = await add_message(db, campaign_id, account, 6, status="sent")
    body = {"resolution": "sent", "message_ids": [*arrived, delivered]}

    assert (await client.post(f"{URL}/resolve", json=body)).status_code == 401
    refused = await client.post(f"{URL}/resolve", json=body, headers=viewer["headers"])
    assert refused.status_code == 403
    before = datetime.now(UTC)
    response = await client.post(
        f"{URL}/resolve",
        json={**body, "note": "in the provider's log"},
        headers=operator["headers"],
    )

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["resolved"] == 2
    assert sorted(result["message_ids"]) == sorted(arrived)
    assert result["not_uncertain"] == [delivered]
    assert result["resolved_by"] == f"api:user:{operator['id']}"
    rows = await db.fetch("SELECT id, status, sent_at FROM messages WHERE id = ANY($1)", arrived)
    assert {r["status"] for r in rows} == {"sent"}
    assert all(r["sent_at"] is not None for r in rows)
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", other) == "uncertain"
    records = await db.fetch("SELECT * FROM uncertain_resolutions ORDER BY message_id")
    assert [r["message_id"] for r in records] == sorted(arrived)
    for record in records:
        assert record["resolution"] == "sent"
        assert record["resolved_by"] == f"api:user:{operator['id']}"
        assert record["note"] == "in the provider's log"
        assert record["resolved_at"] >= before - timedelta(seconds=1)
    events = await db.fetch(
        "SELECT message_id, data FROM events WHERE type = 'uncertain-resolved' ORDER BY message_id"
    )
    assert [e["message_id"] for e in events] == sorted(arrived)
    assert json.loads(events[0]["data"]) == {
        "resolution": "sent",
        "by": f"api:user:{operator['id']}",
    }
    history = await client.get(
        f"{URL}/resolutions", params={"message_id": arrived[0]}, headers=viewer["headers"]
    )
    assert ids(history) == [records[0]["id"]]
    assert ids(await client.get(URL, headers=viewer["headers"])) == [other]

    again = await client.post(f"{URL}/resolve", json=body, headers=operator["headers"])
    assert again.json()["resolved"] == 0
    assert sorted(again.json()["not_uncertain"]) == sorted([*arrived, delivered])


async def test_resending_needs_the_duplicate_risk_accepted_and_queues_with_the_same_message_id(
    client: httpx.AsyncClient,
    db: Conn,
    campaign_id: str,
    operator: dict[str, Any],
) -> None:
    account = await add_account(db, "first")
    resent = [await add_message(db, campaign_id, account, n) for n in range(3)]
    await db.execute(
        "UPDATE campaigns SET status = 'completed', completed_at = now() WHERE id = $1",
        uuid.UUID(campaign_id),
    )
    body: dict[str, Any] = {"resolution": "resend", "filter": {"campaign_id": campaign_id}}

    for refused_body in (
        body,
        {**body, "accept_duplicate_risk": False},
        {"resolution": "resend", "accept_duplicate_risk": True},
        {**body, "message_ids": resent, "accept_duplicate_risk": True},
        {**body, "filter": {"campaign": campaign_id}, "accept_duplicate_risk": True},
    ):
        refused = await client.post(
            f"{URL}/resolve", json=refused_body, headers=operator["headers"]
        )
        assert refused.status_code == 422, refused_body
    assert (
        "accept_duplicate_risk"
        in (await client.post(f"{URL}/resolve", json=body, headers=operator["headers"])).text
    )
    response = await client.post(
        f"{URL}/resolve", json={**body, "accept_duplicate_risk": True}, headers=operator["headers"]
    )

    assert response.status_code == 202, response.text
    assert response.json()["resolved"] == 3
    rows = await db.fetch(
        "SELECT status, account_id, assigned_at, message_id FROM messages ORDER BY id"
    )
    assert [r["status"] for r in rows] == ["queued"] * 3
    assert all(r["account_id"] is None and r["assigned_at"] is None for r in rows)
    assert [r["message_id"] for r in rows] == [f"<{n}.abc@news.example.com>" for n in range(3)]
    campaign = await db.fetchrow(
        "SELECT status, completed_at FROM campaigns WHERE id = $1", uuid.UUID(campaign_id)
    )
    assert campaign["status"] == "running"
    assert campaign["completed_at"] is None
    assert (
        await db.fetchval("SELECT count(*) FROM uncertain_resolutions WHERE resolution = 'resend'")
        == 3
    )


def test_the_cli_lists_uncertain_messages_and_resolves_them(
    db: Conn, campaign_id: str, database_dsn: str
) -> None:
    # A plain test: the CLI runs its own event loop, as it does from a shell.
    async def given() -> tuple[uuid.UUID, list[int]]:
        conn = await asyncpg.connect(database_dsn)
        try:
            account = await add_account(conn, "first")
            return account, [await add_message(conn, campaign_id, account, n) for n in range(3)]
        finally:
            await conn.close()

    async def stored() -> tuple[list[str], set[str]]:
        conn = await asyncpg.connect(database_dsn)
        try:
            statuses = [
                r["status"] for r in await conn.fetch("SELECT status FROM messages ORDER BY id")
            ]
            who = {
                r["resolved_by"]
                for r in await conn.fetch("SELECT resolved_by FROM uncertain_resolutions")
            }
        finally:
            await conn.close()
        return statuses, who

    account, made = asyncio.run(given())
    env = {"MAILFLEET_POSTGRES__DSN": database_dsn}
    runner = CliRunner()

    listed = runner.invoke(app, ["uncertain", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    first_line = next(line for line in listed.output.splitlines() if line.startswith("{"))
    assert first_line.startswith(f'{{"id":{made[0]},')
    refused = runner.invoke(app, ["uncertain", "resolve", "--as", "resend", "--all"], env=env)
    assert refused.exit_code == 1
    assert "accept-duplicate-risk" in refused.output
    unchosen = runner.invoke(app, ["uncertain", "resolve", "--as", "sent"], env=env)
    assert unchosen.exit_code == 1
    marked = runner.invoke(
        app, ["uncertain", "resolve", "--as", "sent", "--id", str(made[0])], env=env
    )
    assert marked.exit_code == 0, marked.output
    assert "resolved 1 " in marked.output
    resent = runner.invoke(
        app,
        ["uncertain", "resolve", "--as", "resend", "--account-id", str(account),
         "--accept-duplicate-risk"],
        env=env,
    )  # fmt: skip
    assert resent.exit_code == 0, resent.output
    statuses, who = asyncio.run(stored())
    assert statuses == ["sent", "queued", "queued"]
    assert len(who) == 1
    assert who.pop().startswith("cli:")
