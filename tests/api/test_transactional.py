"""POST /api/messages: validation, attachments, idempotency, roles, suppressions, the 202."""

import asyncio
import base64
import uuid
from typing import Any

import httpx
import pytest
from faststream.rabbit import RabbitBroker, RabbitQueue
from mailfleet_common import topology
from mailfleet_common.messages import RecipientsEnqueued

from .conftest import Conn, account_body


@pytest.fixture
async def account_id(client: httpx.AsyncClient, admin: dict[str, Any]) -> str:
    body = account_body(tags=["txn"])
    response = await client.post("/api/admin/accounts", json=body, headers=admin["headers"])
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _file(
    data: bytes, name: str = "a.pdf", content_type: str = "application/pdf"
) -> dict[str, str]:
    return {
        "filename": name,
        "content_type": content_type,
        "content": base64.b64encode(data).decode(),
    }


async def _send(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any],
    key: str | None = None,
) -> httpx.Response:  # fmt: skip
    extra = {"Idempotency-Key": key} if key else {}
    return await client.post("/api/messages", json=body, headers={**headers, **extra})


def _body(account_id: str, *messages: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "subject": "Your code",
        "text_body": "Hello {{ name }}, your code is {{ code }}.",
        **defaults,
        "messages": list(messages),
    }


async def test_messages_are_queued_with_their_content_and_answered_202(
    client: httpx.AsyncClient, operator: dict[str, Any], account_id: str, db: Conn
) -> None:
    body = _body(
        account_id,
        {"to": "Ann@Example.COM", "name": "Ann", "variables": {"code": "1"},
         "attachments": [_file(b"%PDF-1.4 one", "../../etc/in\x01voice.pdf")]},
        {"to": "ann@example.com", "subject": "Again {{ code }}", "variables": {"code": "2"}},
        reply_to="help@example.com",
    )  # fmt: skip
    response = await _send(client, operator["headers"], body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 2
    assert answer["rejected"] == []
    ids = [m["id"] for m in answer["messages"]]
    assert [m["index"] for m in answer["messages"]] == [0, 1]
    rows = await db.fetch(
        """
        SELECT m.email, m.status, m.transactional, c.subject, c.reply_to, k.kind, k.status AS ks
        FROM messages m JOIN message_contents c ON c.message_id = m.id
        JOIN campaigns k ON k.id = m.campaign_id WHERE m.id = ANY($1::bigint[]) ORDER BY m.id
        """,
        ids,
    )
    assert [(r["email"], r["subject"]) for r in rows] == [
        ("Ann@example.com", "Your code"),
        ("ann@example.com", "Again {{ code }}"),
    ]
    assert all(r["transactional"] and r["kind"] == "transactional" for r in rows)
    assert {(r["status"], r["ks"], r["reply_to"]) for r in rows} == {
        ("queued", "running", "help@example.com")
    }
    files = await db.fetch("SELECT filename, content_type, content FROM message_attachments")
    assert [tuple(f) for f in files] == [("in_voice.pdf", "application/pdf", b"%PDF-1.4 one")]
    # The same owner and account share one stream.
    again = await _send(client, operator["headers"], _body(account_id, {"to": "c@example.com"}))
    assert again.json()["stream_id"] == answer["stream_id"]


async def test_bad_items_are_refused_one_by_one(
    client: httpx.AsyncClient, operator: dict[str, Any], account_id: str
) -> None:
    body = _body(
        account_id,
        {"to": "not an address"},
        {"to": "ok@example.com", "html_body": "{{ 10**5000 }}"},
        {"to": "ok@example.com", "attachments": [{"filename": "x", "content": "***"}]},
        {"to": "ok@example.com", "attachments": [_file(b"x", "run.EXE")]},
        {"to": "ok@example.com", "attachments": [_file(b"x", "x.txt", "text/plain; x=y")]},
        {"to": "ok@example.com", "attachments": [_file(b"x" * 2_000_000)] * 6},
        {"to": "ok@example.com", "variables": {"code": "fine"}},
    )
    response = await _send(client, operator["headers"], body)
    assert response.status_code == 202, response.text
    reasons = {r["index"]: r["reason"] for r in response.json()["rejected"]}
    assert reasons[0].startswith("invalid address")
    assert reasons[1].startswith("template")
    assert "base64" in reasons[2]
    assert "block" in reasons[3]
    assert "content_type" in reasons[4]
    assert "in all" in reasons[5]
    assert response.json()["accepted"] == 1


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"subject": "two\r\nBcc: x@example.com"}, 422),
        ({"pool": "txn"}, 422),  # account_id and pool together
        ({"account_id": str(uuid.uuid4())}, 422),
        ({"account_id": None, "pool": "nobody-has-it"}, 422),
        ({"messages": []}, 422),
        ({"messages": [{"to": "a@example.com"}] * 101}, 413),
        ({"unknown": 1}, 422),
    ],
)
async def test_malformed_requests_are_problems(
    client: httpx.AsyncClient, operator: dict[str, Any], account_id: str,
    change: dict[str, Any], status: int,
) -> None:  # fmt: skip
    body = {**_body(account_id, {"to": "a@example.com"}), **change}
    response = await _send(client, operator["headers"], body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_one_attachment_over_its_limit_is_refused(
    client: httpx.AsyncClient, operator: dict[str, Any], account_id: str
) -> None:
    big = _file(b"x" * (5 * 1024 * 1024 + 1))
    body = _body(account_id, {"to": "a@example.com", "attachments": [big]})
    response = await _send(client, operator["headers"], body)
    assert response.json()["rejected"][0]["reason"].endswith(f"larger than {5 * 1024 * 1024} bytes")


async def test_suppressed_recipients_are_rejected(
    client: httpx.AsyncClient, operator: dict[str, Any], account_id: str, db: Conn
) -> None:
    await db.execute(
        "INSERT INTO suppressions (email, reason) VALUES ('gone@example.com', 'manual')"
    )
    body = _body(account_id, {"to": "GONE@example.com"}, {"to": "here@example.com"})
    response = await _send(client, operator["headers"], body)
    assert response.json()["rejected"] == [
        {"index": 0, "email": "GONE@example.com", "reason": "suppressed"}
    ]
    assert response.json()["accepted"] == 1


async def test_a_retry_with_the_same_key_replays_and_a_different_body_is_refused(
    client: httpx.AsyncClient, operator: dict[str, Any], account_id: str, db: Conn
) -> None:
    body = _body(account_id, {"to": "a@example.com"})
    first, second = await asyncio.gather(
        _send(client, operator["headers"], body, key="reset-42"),
        _send(client, operator["headers"], body, key="reset-42"),
    )
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert await db.fetchval("SELECT count(*) FROM messages") == 1
    other = _body(account_id, {"to": "b@example.com"})
    refused = await _send(client, operator["headers"], other, key="reset-42")
    assert refused.status_code == 422


async def test_viewers_and_anonymous_callers_cannot_send(
    client: httpx.AsyncClient, viewer: dict[str, Any], account_id: str
) -> None:
    body = _body(account_id, {"to": "a@example.com"})
    assert (await _send(client, viewer["headers"], body)).status_code == 403
    assert (await _send(client, {}, body)).status_code == 401


async def test_a_stream_takes_no_campaign_enqueue(
    client: httpx.AsyncClient, operator: dict[str, Any], account_id: str
) -> None:
    sent = await _send(client, operator["headers"], _body(account_id, {"to": "a@example.com"}))
    response = await client.post(
        "/api/queue/enqueue",
        json={"campaign_id": sent.json()["stream_id"], "recipients": [{"email": "b@example.com"}]},
        headers=operator["headers"],
    )
    assert response.status_code == 409


@pytest.mark.rabbit
async def test_the_dispatcher_is_told_at_once(
    client: httpx.AsyncClient, operator: dict[str, Any], account_id: str, rabbit_url: str
) -> None:
    received: asyncio.Queue[RecipientsEnqueued] = asyncio.Queue()
    broker = RabbitBroker(rabbit_url)
    queue = RabbitQueue(f"test.txn.{uuid.uuid4()}", auto_delete=True, routing_key="enqueue")

    @broker.subscriber(queue, topology.EVENTS)
    async def collect(event: RecipientsEnqueued) -> None:
        await received.put(event)

    async with broker:
        await broker.start()
        body = _body(account_id, {"to": "a@example.com"})
        sent = await _send(client, operator["headers"], body)
        event = await asyncio.wait_for(received.get(), 10)
    assert event.transactional
    assert event.count == 1
    assert str(event.campaign_id) == sent.json()["stream_id"]
