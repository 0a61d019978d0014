"""Campaigns: validation, lifecycle, and cancel giving back reservations."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from .conftest import Conn, account_body, campaign_body, walk_pages


async def test_campaign_is_created_in_draft_with_message_counts(
    client: httpx.AsyncClient, operator: dict[str, Any], admin: dict[str, Any]
) -> None:
    account = (
        await client.post("/api/admin/accounts", json=account_body(), headers=admin["headers"])
    ).json()
    body = campaign_body(
        account_ids=[account["id"]], tracking=False, start_at="2030-01-01T09:00:00+00:00"
    )
    created = await client.post("/api/campaigns", json=body, headers=operator["headers"])
    assert created.status_code == 201, created.text
    campaign = created.json()
    assert campaign["status"] == "draft"
    assert campaign["account_ids"] == [account["id"]]
    assert campaign["tracking"] is False
    assert campaign["unsubscribe_scope"] == "global"
    assert campaign["messages"] == {}
    assert campaign["total_messages"] == 0
    assert campaign["owner_id"] == str(operator["id"])


async def test_campaign_input_is_refused_with_a_reason(
    client: httpx.AsyncClient, operator: dict[str, Any], admin: dict[str, Any]
) -> None:
    archived = (
        await client.post("/api/admin/accounts", json=account_body(), headers=admin["headers"])
    ).json()["id"]
    await client.delete(f"/api/admin/accounts/{archived}", headers=admin["headers"])
    cases = {
        "subject CR/LF": campaign_body(subject="Hi\r\nBcc: everyone@example.com"),
        "name LF": campaign_body(name="a\nb"),
        "no body": campaign_body(html_body=None, text_body=None),
        "broken subject": campaign_body(subject="Hello {{ name "),
        "broken html": campaign_body(html_body="<p>{% if x %}</p>"),
        "long subject": campaign_body(subject="x" * 999),
        "unknown account": campaign_body(account_ids=[str(uuid.uuid4())]),
        "archived account": campaign_body(account_ids=[archived]),
        "malformed account id": campaign_body(account_ids=["nope"]),
        "naive start_at": campaign_body(start_at="2030-01-01T09:00:00"),
        "NUL in body": campaign_body(text_body="a\x00b"),
        "unknown unsubscribe scope": campaign_body(unsubscribe_scope="everywhere"),
        "null unsubscribe scope": campaign_body(unsubscribe_scope=None),
        "tracking not a flag": campaign_body(tracking="sometimes"),
    }
    for case, body in cases.items():
        response = await client.post("/api/campaigns", json=body, headers=operator["headers"])
        assert response.status_code == 422, (case, response.text)
        assert response.json()["detail"], case
    broken = await client.post(
        "/api/campaigns", json=cases["broken html"], headers=operator["headers"]
    )
    assert "html_body is not a valid template" in broken.json()["detail"]


async def test_tracking_and_unsubscribe_scope_are_set_at_creation_and_changed_later(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    h = operator["headers"]
    created = await client.post(
        "/api/campaigns", json=campaign_body(unsubscribe_scope="campaign"), headers=h
    )
    assert created.status_code == 201, created.text
    campaign = created.json()
    assert (campaign["tracking"], campaign["unsubscribe_scope"]) == (True, "campaign")
    path = f"/api/campaigns/{campaign['id']}"

    untracked = await client.patch(path, json={"tracking": False}, headers=h)
    assert untracked.status_code == 200, untracked.text
    assert (untracked.json()["tracking"], untracked.json()["unsubscribe_scope"]) == (
        False,
        "campaign",
    )
    global_scope = await client.patch(path, json={"unsubscribe_scope": "global"}, headers=h)
    assert (global_scope.json()["tracking"], global_scope.json()["unsubscribe_scope"]) == (
        False,
        "global",
    )
    listed = (await client.get("/api/campaigns", headers=h)).json()["items"]
    assert [(c["tracking"], c["unsubscribe_scope"]) for c in listed] == [(False, "global")]
    shown = (await client.get(path, headers=h)).json()
    assert (shown["tracking"], shown["unsubscribe_scope"]) == (False, "global")

    # Once started, senders render with the flag it started with: only the scope may change.
    started = await client.post(f"{path}/start", json={}, headers=h)
    assert started.status_code == 202, started.text
    refused = await client.patch(path, json={"tracking": True}, headers=h)
    assert refused.status_code == 409
    assert "draft" in refused.json()["detail"]
    scoped = await client.patch(path, json={"unsubscribe_scope": "campaign"}, headers=h)
    assert scoped.status_code == 200, scoped.text
    assert (scoped.json()["tracking"], scoped.json()["unsubscribe_scope"]) == (False, "campaign")
    missing = await client.patch(
        "/api/campaigns/00000000-0000-0000-0000-000000000001", json={"tracking": True}, headers=h
    )
    assert missing.status_code == 404


async def test_campaign_changes_are_refused_with_a_reason(
    client: httpx.AsyncClient, operator: dict[str, Any], viewer: dict[str, Any], campaign_id: str
) -> None:
    path = f"/api/campaigns/{campaign_id}"
    for body in (
        {"unsubscribe_scope": "everywhere"},
        {"unsubscribe_scope": None},
        {"tracking": None},
        {"tracking": "sometimes"},
        {"name": "renamed"},
    ):
        response = await client.patch(path, json=body, headers=operator["headers"])
        assert response.status_code == 422, (body, response.text)
        assert response.json()["detail"], body
    forbidden = await client.patch(path, json={"tracking": False}, headers=viewer["headers"])
    assert forbidden.status_code == 403
    unchanged = (await client.get(path, headers=viewer["headers"])).json()
    assert (unchanged["tracking"], unchanged["unsubscribe_scope"]) == (True, "global")


async def test_oversize_bodies_are_refused(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    big = "x" * (512 * 1024 + 1)
    for field in ("html_body", "text_body"):
        response = await client.post(
            "/api/campaigns", json=campaign_body(**{field: big}), headers=operator["headers"]
        )
        assert response.status_code == 413, field
        assert field in response.json()["detail"]
    huge = await client.post(
        "/api/campaigns",
        content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
        headers={**operator["headers"], "content-type": "application/json"},
    )
    assert huge.status_code == 413


async def test_campaign_lifecycle_start_pause_start(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str
) -> None:
    h = operator["headers"]
    start_at = "2031-05-01T08:00:00Z"
    started = await client.post(
        f"/api/campaigns/{campaign_id}/start", json={"start_at": start_at}, headers=h
    )
    assert started.status_code == 202, started.text
    assert started.json()["status"] == "running"
    assert datetime.fromisoformat(started.json()["start_at"]) == datetime(2031, 5, 1, 8, tzinfo=UTC)
    assert (await client.post(f"/api/campaigns/{campaign_id}/start", headers=h)).status_code == 409
    paused = await client.post(f"/api/campaigns/{campaign_id}/pause", headers=h)
    assert paused.json()["status"] == "paused"
    assert (await client.post(f"/api/campaigns/{campaign_id}/pause", headers=h)).status_code == 409
    resumed = await client.post(f"/api/campaigns/{campaign_id}/start", headers=h)
    assert resumed.json()["status"] == "running"


async def test_unknown_campaign_is_not_found_everywhere(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    h = operator["headers"]
    missing = uuid.uuid4()
    for method, path in (
        ("GET", f"/api/campaigns/{missing}"),
        ("PATCH", f"/api/campaigns/{missing}"),
        ("POST", f"/api/campaigns/{missing}/start"),
        ("POST", f"/api/campaigns/{missing}/pause"),
        ("DELETE", f"/api/campaigns/{missing}"),
    ):
        response = await client.request(method, path, headers=h, json={})
        assert response.status_code == 404, path
    assert (await client.get("/api/campaigns/not-a-uuid", headers=h)).status_code == 422


async def test_campaign_list_paginates_newest_first_and_filters_by_status(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    h = operator["headers"]
    ids = []
    for n in range(4):
        created = await client.post("/api/campaigns", json=campaign_body(name=f"c{n}"), headers=h)
        ids.append(created.json()["id"])
    await client.post(f"/api/campaigns/{ids[0]}/start", headers=h)
    pages = await walk_pages(client, "/api/campaigns", h, limit=3)
    assert [[c["name"] for c in page] for page in pages] == [["c3", "c2", "c1"], ["c0"]]
    assert "html_body" not in pages[0][0]
    running = (await client.get("/api/campaigns", params={"status": "running"}, headers=h)).json()
    assert [c["id"] for c in running["items"]] == [ids[0]]
    assert (
        await client.get("/api/campaigns", params={"status": "bogus"}, headers=h)
    ).status_code == 422


async def test_cancel_marks_unsent_messages_cancelled_and_gives_back_reservations(
    client: httpx.AsyncClient, operator: dict[str, Any], admin: dict[str, Any], db: Conn
) -> None:
    account_id = uuid.UUID(
        (
            await client.post("/api/admin/accounts", json=account_body(), headers=admin["headers"])
        ).json()["id"]
    )
    campaign_id = uuid.UUID(
        (
            await client.post("/api/campaigns", json=campaign_body(), headers=operator["headers"])
        ).json()["id"]
    )
    await client.post(f"/api/campaigns/{campaign_id}/start", headers=operator["headers"])
    now = datetime.now(UTC)
    today, yesterday = now.date(), (now - timedelta(days=1)).date()
    await db.execute(
        "INSERT INTO account_daily_usage (account_id, day, reserved, sent) "
        "VALUES ($1, $2, 10, 3), ($1, $3, 4, 0)",
        account_id,
        today,
        yesterday,
    )
    rows = [
        ("queued", None, None), ("deferred", None, None),
        ("assigned", account_id, now), ("assigned", account_id, now),
        ("assigned", account_id, now - timedelta(days=1)),
        ("sending", account_id, now), ("sent", account_id, now), ("failed", None, None),
    ]  # fmt: skip
    await db.executemany(
        "INSERT INTO messages (campaign_id, email, status, account_id, assigned_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        [(campaign_id, f"r{i}@example.com", *row) for i, row in enumerate(rows)],
    )

    response = await client.delete(f"/api/campaigns/{campaign_id}", headers=operator["headers"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["cancelled_messages"] == 5
    assert body["released_reservations"] == 3
    assert body["campaign"]["status"] == "cancelled"
    assert body["campaign"]["messages"] == {"cancelled": 5, "sending": 1, "sent": 1, "failed": 1}
    usage = dict(await db.fetch(
        "SELECT day, reserved FROM account_daily_usage WHERE account_id = $1", account_id
    ))  # fmt: skip
    assert usage == {today: 8, yesterday: 3}
    # Given back here, so nothing is left for the dispatcher's cancelled-assignment sweep.
    assert not await db.fetchval(
        "SELECT count(*) FROM messages WHERE status = 'cancelled' AND account_id IS NOT NULL"
    )
    again = await client.delete(f"/api/campaigns/{campaign_id}", headers=operator["headers"])
    assert again.status_code == 409
    restart = await client.post(f"/api/campaigns/{campaign_id}/start", headers=operator["headers"])
    assert restart.status_code == 409
