"""Traces across the real processes, exported over OTLP/HTTP to a receiver in the test."""

import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
from mailfleet_common.tracking import TokenKind, TokenSigner, parse_keys, unsubscribe_path

from tests.e2e.conftest import FAST_ENV, create_account, wait_until
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.stack import Stack

pytestmark = pytest.mark.slow

Db = "asyncpg.Connection[asyncpg.Record]"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture
async def traced_stack(
    db: Db, database_dsn: str, rabbit_url: str, crypto_keys: str, receiver: OtlpReceiver
) -> AsyncIterator[Stack]:
    env = {
        **FAST_ENV,
        "MAILFLEET_TRACING__OTLP_ENDPOINT": receiver.endpoint,
        # Export within a tenth of a second rather than the SDK's 5 s.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    async with Stack(
        postgres_dsn=database_dsn, rabbit_url=rabbit_url, crypto_keys=crypto_keys, env=env
    ) as running:
        yield running


def _caller() -> tuple[str, str, str]:
    """A W3C traceparent as an instrumented client would send it: (header, trace, span)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _one(spans: list[ReceivedSpan], **match: Any) -> ReceivedSpan:
    attributes = match.pop("attributes", {})
    found = [
        s
        for s in spans
        if all(getattr(s, k) == v for k, v in match.items())
        and all(s.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, f"{len(found)} spans match {match} {attributes}"
    return found[0]


async def _campaign(client: httpx.AsyncClient, account_id: str) -> str:
    body = {"name": "traced", "subject": "Hi", "text_body": "Hello", "account_ids": [account_id]}
    response = await client.post("/api/campaigns", json=body)
    assert response.status_code == 201, response.text
    campaign_id: str = response.json()["id"]
    return campaign_id


async def test_one_trace_runs_from_enqueue_to_the_smtp_transaction(
    traced_stack: Stack, receiver: OtlpReceiver, db: Db
) -> None:
    stack = traced_stack
    sink = await stack.start_sink()
    await stack.start_api()
    await stack.start_dispatcher()
    await stack.start_sender()
    header, trace_id, caller_span = _caller()
    async with aclosing(await stack.admin_client()) as client:
        account = await create_account(client, "traced", sink.port)
        campaign_id = await _campaign(client, account["id"])
        response = await client.post(
            "/api/queue/enqueue",
            json={"campaign_id": campaign_id, "recipients": [{"email": "r@example.org"}]},
            headers={"traceparent": header},
        )
        assert response.status_code == 202, response.text
        message_id, stored = await db.fetchrow(
            "SELECT id, traceparent FROM messages WHERE campaign_id = $1", campaign_id
        )
        response = await client.post(f"/api/campaigns/{campaign_id}/start", json={})
        assert response.status_code == 202, response.text
    await sink.wait_for_records(1)

    wanted = {
        ("mailfleet-api", "SERVER", "POST /api/queue/enqueue"),
        ("mailfleet-dispatcher", "CONSUMER", "mailfleet.events.enqueue process"),
        ("mailfleet-dispatcher", "PRODUCER", "mailfleet.send publish"),
        ("mailfleet-sender", "CONSUMER", "mailfleet.send process"),
        ("mailfleet-sender", "CLIENT", "smtp transaction"),
    }
    spans = await receiver.wait_for_trace(trace_id, wanted)

    request = _one(spans, service="mailfleet-api", kind="SERVER")
    assert request.parent_span_id == caller_span  # the caller's trace continues
    endpoint = _one(spans, service="mailfleet-api", name="fastapi.endpoint")
    assert endpoint.parent_span_id == request.span_id
    assert stored == f"00-{trace_id}-{endpoint.span_id}-01"
    # The API's RecipientsEnqueued event, through FastStream's middleware on both sides.
    announce = _one(spans, service="mailfleet-api", name="mailfleet.events.enqueue create")
    assert announce.parent_span_id == endpoint.span_id
    woken = _one(spans, service="mailfleet-dispatcher", kind="CONSUMER")
    assert woken.parent_span_id == announce.span_id
    # The dispatcher picked the message up from PostgreSQL, in the enqueue's trace.
    dispatch = _one(
        spans,
        service="mailfleet-dispatcher",
        name="mailfleet.send publish",
        attributes={"mailfleet.message_id": message_id, "mailfleet.account_id": account["id"]},
    )
    assert dispatch.kind == "PRODUCER"
    assert dispatch.parent_span_id == endpoint.span_id
    # Across RabbitMQ: the command's header and the message's own context in its body.
    command = _one(spans, service="mailfleet-sender", name="mailfleet.send process")
    assert command.kind == "CONSUMER"
    assert command.parent_span_id == dispatch.span_id
    smtp = _one(spans, service="mailfleet-sender", name="smtp transaction")
    assert smtp.kind == "CLIENT"
    assert smtp.parent_span_id == dispatch.span_id
    assert smtp.attributes["mailfleet.message_id"] == message_id
    assert smtp.attributes["mailfleet.smtp.verdict"] == "sent"
    assert smtp.attributes["server.port"] == sink.port


async def test_a_tracker_hit_and_its_recording_are_one_trace(
    traced_stack: Stack, receiver: OtlpReceiver, db: Db
) -> None:
    stack = traced_stack
    await stack.start_api()
    await stack.start_dispatcher()
    # INFO: the tracker logs each unsubscribe, inside the request's span.
    tracker = await stack.start_tracker({"MAILFLEET_LOG_LEVEL": "INFO"})
    async with aclosing(await stack.admin_client()) as client:
        account = await create_account(client, "hits", 2525)
        campaign_id = await _campaign(client, account["id"])
        response = await client.post(
            "/api/queue/enqueue",
            json={"campaign_id": campaign_id, "recipients": [{"email": "leaving@example.org"}]},
        )
        assert response.status_code == 202, response.text
    message_id = await db.fetchval("SELECT id FROM messages WHERE campaign_id = $1", campaign_id)
    signer = TokenSigner(parse_keys(stack.tracking_keys))
    token = signer.sign(TokenKind.UNSUBSCRIBE, message_id, int(time.time()) - 3600)
    header, trace_id, caller_span = _caller()
    async with httpx.AsyncClient(base_url=tracker.url) as mail_client:
        response = await mail_client.post(
            unsubscribe_path(token),
            content=b"List-Unsubscribe=One-Click",
            headers={
                "content-type": "application/x-www-form-urlencoded",
                "traceparent": header,
            },
        )
        assert response.status_code == 200, response.text

    async def recorded() -> bool:
        found = await db.fetchval(
            "SELECT count(*) FROM events WHERE type = 'unsubscribed' AND message_id = $1",
            message_id,
        )
        return bool(found)

    await wait_until(recorded, 20, "the unsubscribe recorded")

    wanted = {
        ("mailfleet-tracker", "SERVER", "POST /unsubscribe/{token}"),
        ("mailfleet-tracker", "PRODUCER", "mailfleet.events publish"),
        ("mailfleet-dispatcher", "CONSUMER", "record unsubscribed"),
    }
    spans = await receiver.wait_for_trace(trace_id, wanted)
    request = _one(spans, service="mailfleet-tracker", kind="SERVER")
    assert request.name == "POST /unsubscribe/{token}"  # never the token itself
    assert request.parent_span_id == caller_span
    publish = _one(spans, service="mailfleet-tracker", kind="PRODUCER")
    assert publish.parent_span_id == request.span_id
    assert publish.attributes["messaging.rabbitmq.destination.routing_key"] == "unsubscribed"
    record = _one(spans, service="mailfleet-dispatcher", name="record unsubscribed")
    assert record.parent_span_id == request.span_id
    assert record.attributes["mailfleet.message_id"] == message_id
    # FastStream's middleware in the dispatcher read the header the tracker wrote by hand.
    faststream = [
        s
        for s in spans
        if s.service == "mailfleet-dispatcher" and s.kind == "CONSUMER" and s is not record
    ]
    assert [s.parent_span_id for s in faststream] == [publish.span_id]

    # The tracker's log line about it names the trace and the request's span.
    lines = [
        json.loads(line)
        for line in tracker.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    [logged] = [line for line in lines if line.get("message") == "unsubscribed"]
    assert (logged["trace_id"], logged["span_id"]) == (trace_id, request.span_id)
