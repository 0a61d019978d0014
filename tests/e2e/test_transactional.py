"""Transactional sends across real processes: ahead of a campaign's backlog, once, intact."""

import asyncio
import base64
import time
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default

import asyncpg
import pytest

from tests.e2e.conftest import Fleet, campaign_counts, create_account, start_campaign, wait_until
from tests.stack import Sink

pytestmark = pytest.mark.slow


def _delivered_to(sink: Sink, address: str) -> list[EmailMessage]:
    assert sink.maildir is not None
    found = []
    for path in sorted((sink.maildir / "new").iterdir()):
        message = BytesParser(policy=default).parsebytes(path.read_bytes())
        assert isinstance(message, EmailMessage)
        if message["To"].addresses[0].addr_spec.lower() == address:
            found.append(message)
    return found


async def test_a_transactional_message_passes_the_backlog_once_with_its_attachments(
    fleet: Fleet, db: "asyncpg.Connection[asyncpg.Record]"
) -> None:
    sink, client = fleet.sink, fleet.client
    # Paced so the campaign's backlog takes seconds: 400 messages, one every 20 ms.
    account = await create_account(client, "busy", sink.port, min_gap_ms=20, daily_limit=1000)
    emails = [f"reader{i}@example.org" for i in range(400)]
    campaign_id = await start_campaign(client, [account["id"]], emails)

    async def some_sent() -> bool:
        return (await campaign_counts(client, campaign_id)).get("sent", 0) >= 20

    await wait_until(some_sent, 30, "the campaign sending")
    pdf = bytes(range(256)) * 40
    body = {
        "account_id": account["id"],
        "subject": "Receipt {{ n }}",
        "html_body": "<p>Thanks {{ name }}: receipt {{ n }} attached.</p>",
        "text_body": "Thanks {{ name }}: receipt {{ n }} attached.",
        "reply_to": "billing@example.com",
        "messages": [
            {
                "to": "buyer@example.net",
                "name": "Buyer",
                "variables": {"n": 7},
                "attachments": [
                    {"filename": "receipt 7.pdf", "content_type": "application/pdf",
                     "content": base64.b64encode(pdf).decode()},
                    {"filename": "notes.txt", "content_type": "text/plain",
                     "content": base64.b64encode("é\n".encode()).decode()},
                ],
            }
        ],
    }  # fmt: skip
    response = await client.post("/api/messages", json=body, headers={"Idempotency-Key": "r-7"})
    assert response.status_code == 202, response.text
    accepted_at = time.time()
    message_id = response.json()["messages"][0]["id"]

    async def arrived() -> bool:
        return any("buyer@example.net" in r["recipients"] for r in sink.records())

    await wait_until(arrived, 10, "the transactional message", every_s=0.05)
    records = sink.records()
    at = next(r["at"] for r in records if "buyer@example.net" in r["recipients"])
    campaign_before = sum(1 for r in records if r["at"] <= at) - 1
    # It went out ahead of the campaign's look-ahead, with most of the backlog still to go.
    assert at - accepted_at < 2.0
    assert campaign_before < 200

    async def drained() -> bool:
        counts = await campaign_counts(client, campaign_id)
        return counts.get("sent", 0) == 400

    await wait_until(drained, 60, "the campaign done")
    await sink.wait_for_records(401)
    records = sink.records()
    assert len(records) == 401
    assert len({r["message_id"] for r in records}) == 401
    assert sum(1 for r in records if "buyer@example.net" in r["recipients"]) == 1
    assert sum(1 for r in records if r["at"] > at) >= 150

    # A retry with the same key sends nothing more.
    again = await client.post("/api/messages", json=body, headers={"Idempotency-Key": "r-7"})
    assert again.json()["messages"][0]["id"] == message_id

    [message] = _delivered_to(sink, "buyer@example.net")
    assert message["Subject"] == "Receipt 7"
    assert message["Reply-To"] == "billing@example.com"
    assert message["List-Unsubscribe"] is None
    files = {p.get_filename(): p for p in message.iter_attachments()}
    assert set(files) == {"receipt 7.pdf", "notes.txt"}
    assert files["receipt 7.pdf"].get_content() == pdf
    assert files["receipt 7.pdf"].get_content_type() == "application/pdf"
    assert files["notes.txt"].get_payload(decode=True) == "é\n".encode()
    text = message.get_body(preferencelist=("plain",))
    assert text is not None
    assert "receipt 7 attached" in text.get_content()

    status = await db.fetchval("SELECT status FROM messages WHERE id = $1", message_id)
    assert status == "sent"

    async def recorded() -> bool:
        # Sends are counted from the attempts' reports, which the dispatcher records a moment
        # after the outcomes themselves.
        return await db.fetchval("SELECT sent FROM account_daily_usage") == 401

    await wait_until(recorded, 10, "the attempts recorded")
    usage = await db.fetchrow("SELECT reserved, sent FROM account_daily_usage")
    assert usage is not None
    assert usage["reserved"] == usage["sent"] == 401
    # The stream is a campaign of its own, never completed; the campaign completes.
    kinds = dict(await db.fetch("SELECT kind, status FROM campaigns"))
    assert kinds == {"campaign": "completed", "transactional": "running"}


async def test_the_daily_limit_holds_for_transactional_messages_too(
    fleet: Fleet, db: "asyncpg.Connection[asyncpg.Record]"
) -> None:
    sink, client = fleet.sink, fleet.client
    account = await create_account(client, "small", sink.port, daily_limit=3)
    body = {
        "account_id": account["id"],
        "subject": "Code",
        "text_body": "{{ code }}",
        "messages": [{"to": f"user{i}@example.net", "variables": {"code": i}} for i in range(5)],
    }
    response = await client.post("/api/messages", json=body)
    assert response.status_code == 202, response.text
    await sink.wait_for_records(3)
    await asyncio.sleep(1.5)
    assert len(sink.records()) == 3
    statuses = sorted(r["status"] for r in await db.fetch("SELECT status FROM messages"))
    assert statuses == ["queued", "queued", "sent", "sent", "sent"]
