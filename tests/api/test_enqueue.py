"""Enqueueing recipients: screening, duplicates, suppressions, idempotency, the bus event."""

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from faststream.rabbit import RabbitBroker, RabbitQueue
from mailfleet_common import topology
from mailfleet_common.messages import RecipientsEnqueued

from .conftest import Conn


async def _enqueue(
    client: httpx.AsyncClient, headers: dict[str, str], campaign_id: str,
    recipients: list[dict[str, Any]], key: str | None = None,
) -> httpx.Response:  # fmt: skip
    extra = {"Idempotency-Key": key} if key else {}
    return await client.post(
        "/api/queue/enqueue",
        json={"campaign_id": campaign_id, "recipients": recipients},
        headers={**headers, **extra},
    )


async def test_valid_recipients_are_stored_as_queued_messages(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str, db: Conn
) -> None:
    recipients = [
        {"email": "Ann@Example.COM", "name": "Ann", "variables": {"plan": "pro", "n": [1, 2]}},
        {"email": "bob@example.org"},
    ]
    response = await _enqueue(client, operator["headers"], campaign_id, recipients)
    assert response.status_code == 202, response.text
    assert response.json() == {
        "campaign_id": campaign_id,
        "accepted": 2,
        "rejected_count": 0,
        "rejected": [],
    }
    rows = await db.fetch("SELECT email, name, variables, status FROM messages ORDER BY id")
    assert [dict(r) for r in rows] == [
        {
            "email": "Ann@example.com",
            "name": "Ann",
            "variables": '{"n": [1, 2], "plan": "pro"}',
            "status": "queued",
        },
        {"email": "bob@example.org", "name": None, "variables": "{}", "status": "queued"},
    ]


async def test_bad_addresses_names_and_variables_are_rejected_one_by_one(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str
) -> None:
    recipients = [
        {"email": "ok@example.com"},
        {"email": "no-at-sign"},
        {"email": "two@@example.com"},
        {"email": "user@localhost"},
        {"email": "inject@example.com\r\nBcc: x@example.com"},
        {"email": "named@example.com", "name": "Eve\r\nBcc: all@example.com"},
        {"email": "long@example.com", "name": "n" * 201},
        {"email": "vars@example.com", "variables": {"blob": "x" * 9000}},
        {"email": "nul@example.com", "variables": {"a": "\u0000"}},
        {"email": "x" * 400 + "@example.com"},
    ]
    response = await _enqueue(client, operator["headers"], campaign_id, recipients)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 1
    rejected = {r["index"]: r["reason"] for r in body["rejected"]}
    assert sorted(rejected) == list(range(1, 10))
    assert all(reason.startswith("invalid address") for i, reason in rejected.items() if i <= 4)
    assert "control characters" in rejected[5]
    assert "longer than 200" in rejected[6]
    assert "larger than" in rejected[7]
    assert "NUL" in rejected[8]
    assert rejected[9].startswith("invalid address")


async def test_duplicates_in_the_request_and_the_campaign_are_dropped_and_reported(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str, db: Conn
) -> None:
    h = operator["headers"]
    await _enqueue(client, h, campaign_id, [{"email": "first@example.com"}])
    response = await _enqueue(client, h, campaign_id, [
        {"email": "new@example.com"}, {"email": "NEW@example.com"}, {"email": "First@Example.com"},
    ])  # fmt: skip
    body = response.json()
    assert body["accepted"] == 1
    assert body["rejected"] == [
        {"index": 1, "email": "NEW@example.com", "reason": "duplicate in request"},
        {"index": 2, "email": "First@example.com", "reason": "already in campaign"},
    ]
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


async def test_suppressed_addresses_are_rejected_unless_expired_or_for_another_campaign(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str, db: Conn
) -> None:
    other = (
        await client.post(
            "/api/campaigns",
            json={"name": "o", "subject": "s", "text_body": "t"},
            headers=operator["headers"],
        )
    ).json()["id"]
    await db.execute(
        """
        INSERT INTO suppressions (email, campaign_id, reason, expires_at) VALUES
            ('Global@example.com', NULL, 'bounce', NULL),
            ('this@example.com', $1, 'unsubscribed', NULL),
            ('other@example.com', $2, 'unsubscribed', NULL),
            ('expired@example.com', NULL, 'bounce', now() - interval '1 day')
        """,
        uuid.UUID(campaign_id),
        uuid.UUID(other),
    )
    emails = ["global@example.com", "this@example.com", "other@example.com", "expired@example.com"]
    response = await _enqueue(
        client, operator["headers"], campaign_id, [{"email": e} for e in emails]
    )
    body = response.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [
        {"index": 0, "email": "global@example.com", "reason": "suppressed"},
        {"index": 1, "email": "this@example.com", "reason": "suppressed"},
    ]


async def test_a_retry_with_the_same_idempotency_key_replays_the_first_response(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str, db: Conn
) -> None:
    h = operator["headers"]
    recipients = [{"email": "a@example.com"}, {"email": "bad"}]
    first = await _enqueue(client, h, campaign_id, recipients, key="batch-1")
    await db.execute("DELETE FROM messages")  # a real repeat would now insert again
    second = await _enqueue(client, h, campaign_id, recipients, key="batch-1")
    assert second.status_code == 202
    assert second.json() == first.json()
    assert await db.fetchval("SELECT count(*) FROM messages") == 0

    different = await _enqueue(client, h, campaign_id, [{"email": "b@example.com"}], key="batch-1")
    assert different.status_code == 422
    assert "different request body" in different.json()["detail"]


async def test_idempotency_keys_are_per_principal(
    client: httpx.AsyncClient, operator: dict[str, Any], admin: dict[str, Any], campaign_id: str
) -> None:
    recipients = [{"email": "a@example.com"}]
    first = await _enqueue(client, operator["headers"], campaign_id, recipients, key="k")
    other = await _enqueue(client, admin["headers"], campaign_id, recipients, key="k")
    assert first.json()["accepted"] == 1
    assert other.json()["rejected"][0]["reason"] == "already in campaign"


async def test_concurrent_requests_with_one_idempotency_key_insert_once(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str, db: Conn
) -> None:
    recipients = [{"email": f"c{i}@example.com"} for i in range(50)]
    responses = await asyncio.gather(*(
        _enqueue(client, operator["headers"], campaign_id, recipients, key="same") for _ in range(4)
    ))  # fmt: skip
    assert {r.status_code for r in responses} == {202}
    assert all(r.json() == responses[0].json() for r in responses)
    assert responses[0].json()["accepted"] == 50
    assert await db.fetchval("SELECT count(*) FROM messages") == 50


async def test_more_than_ten_thousand_recipients_are_refused(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str, db: Conn
) -> None:
    recipients = [{"email": f"u{i}@example.com"} for i in range(10_001)]
    response = await _enqueue(client, operator["headers"], campaign_id, recipients)
    assert response.status_code == 413
    assert "at most 10000" in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_malformed_requests_are_refused_with_422(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str
) -> None:
    h = {**operator["headers"], "content-type": "application/json"}
    for body in (
        b"not json",
        b"{}",
        b'{"campaign_id": "nope", "recipients": []}',
        json.dumps({"campaign_id": campaign_id, "recipients": [5]}).encode(),
        json.dumps({"campaign_id": campaign_id, "recipients": [], "x": 1}).encode(),
    ):
        response = await client.post("/api/queue/enqueue", content=body, headers=h)
        assert response.status_code == 422, body
    long_key = await _enqueue(client, operator["headers"], campaign_id, [], key="k" * 201)
    assert long_key.status_code == 422


async def test_enqueue_into_unknown_cancelled_or_completed_campaigns(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str, db: Conn
) -> None:
    h = operator["headers"]
    unknown = await _enqueue(client, h, str(uuid.uuid4()), [{"email": "a@example.com"}])
    assert unknown.status_code == 404

    await db.execute("UPDATE campaigns SET status = 'completed', completed_at = now()")
    reopened = await _enqueue(client, h, campaign_id, [{"email": "a@example.com"}])
    assert reopened.status_code == 202
    detail = (await client.get(f"/api/campaigns/{campaign_id}", headers=h)).json()
    assert detail["status"] == "running"
    assert detail["completed_at"] is None

    await client.delete(f"/api/campaigns/{campaign_id}", headers=h)
    cancelled = await _enqueue(client, h, campaign_id, [{"email": "b@example.com"}])
    assert cancelled.status_code == 409


@pytest.mark.rabbit
async def test_enqueue_publishes_one_recipients_enqueued_event(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str, rabbit_url: str
) -> None:
    received: asyncio.Queue[RecipientsEnqueued] = asyncio.Queue()
    broker = RabbitBroker(rabbit_url)
    queue = RabbitQueue(
        f"test.enqueue.{uuid.uuid4().hex}", auto_delete=True, routing_key=topology.ENQUEUE_KEY
    )

    @broker.subscriber(queue, topology.EVENTS)
    async def collect(event: RecipientsEnqueued) -> None:
        await received.put(event)

    async with broker:
        await broker.start()
        response = await _enqueue(
            client,
            operator["headers"],
            campaign_id,
            [{"email": "a@example.com"}, {"email": "b@example.com"}, {"email": "broken"}],
        )
        assert response.json()["accepted"] == 2
        event = await asyncio.wait_for(received.get(), timeout=10)
        assert event == RecipientsEnqueued(campaign_id=uuid.UUID(campaign_id), count=2)
        # Nothing new accepted: no event.
        await _enqueue(client, operator["headers"], campaign_id, [{"email": "a@example.com"}])
        await asyncio.sleep(0.5)
        assert received.empty()


async def test_ten_thousand_recipients_in_one_call_are_all_stored(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn
) -> None:
    # How fast is the benchmark's business (bench.delivery reports enqueue_s); this proves a
    # full-size call is accepted whole, across the chunks the API screens and stores.
    domains = ["gmail.com", "yahoo.com", "outlook.com", "example.org", "mail.example.net"]
    headers = {**operator["headers"], "content-type": "application/json"}
    created = await client.post(
        "/api/campaigns", json={"name": "big", "subject": "s", "text_body": "t"}, headers=headers
    )
    recipients = [
        {"email": f"reader.{i}@{domains[i % 5]}", "name": f"Reader {i}", "variables": {"n": i}}
        for i in range(10_000)
    ]
    payload = json.dumps({"campaign_id": created.json()["id"], "recipients": recipients})
    response = await client.post("/api/queue/enqueue", content=payload, headers=headers)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 10_000
    stored = await db.fetch("SELECT email, variables FROM messages ORDER BY id")
    assert [r["email"] for r in stored] == [r["email"] for r in recipients]
    assert json.loads(stored[-1]["variables"]) == {"n": 9_999}
