"""Webhook endpoints through the API: validation, ownership, secrets, the log and replays."""

import json
from typing import Any

import httpx
import pytest
from mailfleet_common.crypto import SecretBox, generate_key
from standardwebhooks.webhooks import Webhook

from tests.api.conftest import Conn, UserFactory, account_body, campaign_body
from tests.api.test_cli import mailfleet

ENDPOINTS = "/api/webhooks/endpoints"


def endpoint_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "url": "https://hooks.example.com/in",
        "event_types": ["message.sent", "message.bounced", "campaign.completed"],
        "description": "CRM",
    }
    body.update(overrides)
    return body


async def create(client: httpx.AsyncClient, user: dict[str, Any], **overrides: Any) -> Any:
    answer = await client.post(ENDPOINTS, json=endpoint_body(**overrides), headers=user["headers"])
    assert answer.status_code == 201, answer.text
    return answer.json()


async def test_the_secret_is_shown_once_and_stored_encrypted(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn, crypto_keys: str
) -> None:
    created = await create(client, operator)
    assert created["secret"].startswith("whsec_")
    Webhook(created["secret"])  # a secret the standardwebhooks package takes
    assert created["owner_id"] == str(operator["id"])
    assert created["event_types"] == ["campaign.completed", "message.bounced", "message.sent"]
    stored = await db.fetchval("SELECT secret_enc FROM webhook_endpoints")
    assert created["secret"].encode() not in bytes(stored)
    assert SecretBox(crypto_keys.split(",")).decrypt(bytes(stored)) == created["secret"]
    shown = await client.get(f"{ENDPOINTS}/{created['id']}", headers=operator["headers"])
    assert "secret" not in shown.json()
    listed = await client.get(ENDPOINTS, headers=operator["headers"])
    assert "secret" not in listed.json()["items"][0]
    rotated = await client.post(
        f"{ENDPOINTS}/{created['id']}/rotate-secret", headers=operator["headers"]
    )
    assert rotated.status_code == 200
    assert rotated.json()["secret"] not in (created["secret"], None)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/in",
        "file:///etc/passwd",
        "https://user:pass@hooks.example.com/in",
        "https://token@hooks.example.com/in",
        "https:///no-host",
        "hooks.example.com/in",
        "https://hooks.example.com:99999/in",
        "https://hooks.example.com/a b",
        "https://hooks.example.com/" + "a" * 2000,
    ],
)
async def test_bad_urls_are_refused(
    client: httpx.AsyncClient, operator: dict[str, Any], url: str
) -> None:
    answer = await client.post(ENDPOINTS, json=endpoint_body(url=url), headers=operator["headers"])
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "changes",
    [
        {"event_types": []},
        {"event_types": ["message.exploded"]},
        {"event_types": None},
        {"secret": "whsec_mine"},
        {"description": "two\nlines"},
    ],
)
async def test_bad_fields_are_refused(
    client: httpx.AsyncClient, operator: dict[str, Any], changes: dict[str, Any]
) -> None:
    answer = await client.post(
        ENDPOINTS, json=endpoint_body(**changes), headers=operator["headers"]
    )
    assert answer.status_code == 422


async def test_users_see_and_change_only_their_own_endpoints_and_admins_all(
    client: httpx.AsyncClient, make_user: UserFactory, admin: dict[str, Any]
) -> None:
    ann, bob = await make_user("operator"), await make_user("operator")
    viewer = await make_user("viewer")
    anns = await create(client, ann)
    bobs = await create(client, bob)
    listed = await client.get(ENDPOINTS, headers=ann["headers"])
    assert [e["id"] for e in listed.json()["items"]] == [anns["id"]]
    for method, path in [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/rotate-secret"),
        ("GET", "/deliveries"),
        ("GET", "/attempts"),
        ("POST", "/deliveries/1/replay"),
    ]:
        kwargs: dict[str, Any] = {"json": {"enabled": False}} if method == "PATCH" else {}
        answer = await client.request(
            method, f"{ENDPOINTS}/{bobs['id']}{path}", headers=ann["headers"], **kwargs
        )
        assert answer.status_code == 404, (method, path)
    everyone = await client.get(ENDPOINTS, headers=admin["headers"])
    assert {e["id"] for e in everyone.json()["items"]} == {anns["id"], bobs["id"]}
    by_admin = await client.patch(
        f"{ENDPOINTS}/{bobs['id']}", json={"enabled": False}, headers=admin["headers"]
    )
    assert by_admin.json()["disabled_reason"] == "disabled through the API"
    assert (
        await client.post(ENDPOINTS, json=endpoint_body(), headers=viewer["headers"])
    ).status_code == 403
    assert (await client.get(ENDPOINTS)).status_code == 401


async def test_the_list_is_cursor_paginated(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    made = [(await create(client, operator))["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(ENDPOINTS, params=params, headers=operator["headers"])).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]


async def test_events_fill_the_outbox_only_for_the_types_enabled_endpoints_want(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn
) -> None:
    await db.execute("INSERT INTO events (occurred_at, type) VALUES (now(), 'sent')")
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0  # no endpoint yet
    wants_sent = await create(client, operator, event_types=["message.sent"])
    await create(client, operator, event_types=["account.paused"], url="http://127.0.0.1:1/x")
    off = await create(client, operator, event_types=["message.sent"])
    await client.patch(
        f"{ENDPOINTS}/{off['id']}", json={"enabled": False}, headers=operator["headers"]
    )
    await db.execute(
        "INSERT INTO events (occurred_at, type, data) VALUES (now(), 'sent', '{\"attempt\": 1}'),"
        " (now(), 'opened', '{}'), (now(), 'uncertain-resolved', '{}')"
    )
    rows = await db.fetch("SELECT endpoint_id, event_type, payload FROM webhook_deliveries")
    assert [(str(r["endpoint_id"]), r["event_type"]) for r in rows] == [
        (wants_sent["id"], "message.sent")
    ]


async def test_deliveries_attempts_and_replays(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn
) -> None:
    endpoint = await create(client, operator, event_types=["message.sent", "message.opened"])
    await db.execute(
        "INSERT INTO events (occurred_at, type) VALUES (now() - interval '2 hours', 'sent'),"
        " (now() - interval '1 hour', 'opened'), (now(), 'sent')"
    )
    base = f"{ENDPOINTS}/{endpoint['id']}"
    page = (await client.get(f"{base}/deliveries", headers=operator["headers"])).json()
    types = [d["event_type"] for d in page["items"]]
    assert types == ["message.sent", "message.opened", "message.sent"]
    first = page["items"][-1]
    assert first["status"] == "pending"
    assert first["webhook_id"].startswith("msg_")
    await db.execute(
        "INSERT INTO webhook_attempts (delivery_id, endpoint_id, attempt, attempted_at,"
        " status_code, latency_ms, response) VALUES ($1, $2, 1, now(), 503, 12.5, 'busy')",
        first["id"],
        endpoint["id"],
    )
    log = (await client.get(f"{base}/attempts", headers=operator["headers"])).json()
    assert log["items"][0]["status_code"] == 503
    assert log["items"][0]["response"] == "busy"

    again = await client.post(
        f"{base}/deliveries/{first['id']}/replay", headers=operator["headers"]
    )
    assert again.status_code == 202
    copy = await db.fetchrow("SELECT * FROM webhook_deliveries WHERE replay_of = $1", first["id"])
    original = await db.fetchrow("SELECT * FROM webhook_deliveries WHERE id = $1", first["id"])
    assert (copy["event_id"], copy["payload"]) == (original["event_id"], original["payload"])
    missing = await client.post(f"{base}/deliveries/999999/replay", headers=operator["headers"])
    assert missing.status_code == 404

    ranged = await client.post(
        f"{base}/replay",
        json={
            "since": (await db.fetchval("SELECT now() - interval '90 minutes'")).isoformat(),
            "until": (await db.fetchval("SELECT now() + interval '1 minute'")).isoformat(),
            "event_types": ["message.opened"],
        },
        headers=operator["headers"],
    )
    assert ranged.status_code == 202
    assert ranged.json() == {"queued": 1}
    backwards = await client.post(
        f"{base}/replay",
        json={"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"},
        headers=operator["headers"],
    )
    assert backwards.status_code == 422


async def test_a_lost_secret_is_forgotten_by_check_keys_and_must_be_rotated(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn
) -> None:
    endpoint = await create(client, operator)
    await db.execute("UPDATE webhook_endpoints SET secret_enc = NULL, enabled = false")
    answer = await client.patch(
        f"{ENDPOINTS}/{endpoint['id']}", json={"enabled": True}, headers=operator["headers"]
    )
    assert answer.status_code == 409
    await client.post(f"{ENDPOINTS}/{endpoint['id']}/rotate-secret", headers=operator["headers"])
    answer = await client.patch(
        f"{ENDPOINTS}/{endpoint['id']}", json={"enabled": True}, headers=operator["headers"]
    )
    assert answer.json()["enabled"] is True


async def test_check_keys_and_rotate_secrets_cover_webhook_secrets(
    client: httpx.AsyncClient,
    operator: dict[str, Any],
    db: Conn,
    database_dsn: str,
    crypto_keys: str,
) -> None:
    created = await create(client, operator)
    newest = generate_key()
    rotated = await mailfleet(database_dsn, f"{newest},{crypto_keys}", "rotate-secrets")
    assert "1 webhook secrets" in rotated.output
    stored = bytes(await db.fetchval("SELECT secret_enc FROM webhook_endpoints"))
    assert SecretBox([newest]).decrypt(stored) == created["secret"]

    foreign = await mailfleet(database_dsn, generate_key(), "check-keys")
    assert foreign.exit_code == 2
    assert "signing secrets of 1 of 1 webhook endpoints cannot be decrypted" in foreign.output
    assert "https://hooks.example.com/in" in foreign.output
    forgotten = await mailfleet(database_dsn, generate_key(), "check-keys", "--forget")
    assert forgotten.exit_code == 0, forgotten.output
    row = await db.fetchrow("SELECT secret_enc, enabled, disabled_reason FROM webhook_endpoints")
    assert row["secret_enc"] is None
    assert row["enabled"] is False
    assert "rotate it" in row["disabled_reason"]


async def test_enqueue_records_queued_events_only_while_an_endpoint_wants_them(
    client: httpx.AsyncClient, operator: dict[str, Any], admin: dict[str, Any], db: Conn
) -> None:
    campaign = await client.post("/api/campaigns", json=campaign_body(), headers=admin["headers"])
    campaign_id = campaign.json()["id"]

    async def enqueue(email: str) -> None:
        answer = await client.post(
            "/api/queue/enqueue",
            json={"campaign_id": campaign_id, "recipients": [{"email": email}]},
            headers=admin["headers"],
        )
        assert answer.status_code < 300, answer.text

    await enqueue("a@example.com")
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'queued'") == 0
    endpoint = await create(client, operator, event_types=["message.queued"])
    await enqueue("b@example.com")
    row = await db.fetchrow("SELECT endpoint_id, payload FROM webhook_deliveries")
    assert str(row["endpoint_id"]) == endpoint["id"]
    payload = json.loads(row["payload"])
    assert payload["type"] == "message.queued"
    assert payload["data"]["email"] == "b@example.com"
    assert payload["data"]["campaign_id"] == campaign_id


async def test_pausing_and_resuming_an_account_through_the_api_are_events(
    client: httpx.AsyncClient, operator: dict[str, Any], admin: dict[str, Any], db: Conn
) -> None:
    await create(client, operator, event_types=["account.paused", "account.resumed"])
    account = await client.post(
        "/api/admin/accounts", json=account_body(), headers=admin["headers"]
    )
    path = f"/api/admin/accounts/{account.json()['id']}"
    for state in ("paused", "active"):
        answer = await client.patch(path, json={"status": state}, headers=operator["headers"])
        assert answer.status_code == 200, answer.text
    rows = await db.fetch("SELECT event_type, payload FROM webhook_deliveries ORDER BY id")
    assert [r["event_type"] for r in rows] == ["account.paused", "account.resumed"]
    assert json.loads(rows[0]["payload"])["data"]["account_id"] == account.json()["id"]


async def test_transactional_sends_record_queued_events_only_while_an_endpoint_wants_them(
    client: httpx.AsyncClient, operator: dict[str, Any], admin: dict[str, Any], db: Conn
) -> None:
    account = await client.post(
        "/api/admin/accounts", json=account_body(), headers=admin["headers"]
    )
    body = {
        "account_id": account.json()["id"],
        "subject": "Your code",
        "text_body": "Hello",
        "messages": [{"to": "a@example.com"}],
    }

    async def send(to: str) -> int:
        answer = await client.post(
            "/api/messages",
            json={**body, "messages": [{"to": to}]},
            headers=operator["headers"],
        )
        assert answer.status_code == 202, answer.text
        return int(answer.json()["messages"][0]["id"])

    await send("a@example.com")
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'queued'") == 0
    await create(client, operator, event_types=["message.queued"])
    message_id = await send("b@example.com")
    payload = json.loads(await db.fetchval("SELECT payload FROM webhook_deliveries"))
    assert payload["type"] == "message.queued"
    assert payload["data"]["email"] == "b@example.com"
    assert payload["data"]["message_id"] == message_id
