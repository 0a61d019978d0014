"""Account pools: tags on accounts, campaigns targeting them, the pools listing."""

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx

from .conftest import Conn, account_body, campaign_body, walk_pages

ACCOUNTS = "/api/admin/accounts"
NO_ACCOUNTS = {"active": 0, "paused": 0, "disabled": 0, "archived": 0}
NO_CAMPAIGNS = {"draft": 0, "running": 0, "paused": 0, "cancelled": 0, "completed": 0}


async def create_account(client: httpx.AsyncClient, admin: dict[str, Any], **fields: Any) -> str:
    response = await client.post(ACCOUNTS, json=account_body(**fields), headers=admin["headers"])
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_tags_are_stored_sorted_without_repeats_and_a_patch_replaces_them(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    h = admin["headers"]
    account_id = await create_account(client, admin, tags=["warm", "eu", "warm"])
    url = f"{ACCOUNTS}/{account_id}"

    shown = (await client.get(url, headers=h)).json()
    replaced = await client.patch(url, json={"tags": ["us", "b2b.news:2"]}, headers=h)
    renamed = await client.patch(url, json={"name": "other"}, headers=h)
    cleared = await client.patch(url, json={"tags": []}, headers=h)

    assert shown["tags"] == ["eu", "warm"]
    assert replaced.json()["tags"] == ["b2b.news:2", "us"]
    assert renamed.json()["tags"] == ["b2b.news:2", "us"]
    assert cleared.json()["tags"] == []


async def test_tags_are_validated(client: httpx.AsyncClient, admin: dict[str, Any]) -> None:
    h = admin["headers"]
    account_id = await create_account(client, admin)
    bad_lists: list[Any] = [
        ["EU"], ["eu west"], ["-eu"], [""], ["x" * 64], ["eu\n"], ["é"], "eu", [1],
        [f"t{i}" for i in range(33)],
    ]  # fmt: skip
    for tags in bad_lists:
        created = await client.post(ACCOUNTS, json=account_body(tags=tags), headers=h)
        patched = await client.patch(f"{ACCOUNTS}/{account_id}", json={"tags": tags}, headers=h)
        assert (created.status_code, patched.status_code) == (422, 422), tags
    null = await client.patch(f"{ACCOUNTS}/{account_id}", json={"tags": None}, headers=h)
    assert null.status_code == 422
    most = await client.post(
        ACCOUNTS, json=account_body(tags=[f"t{i}" for i in range(32)] + ["x" * 63]), headers=h
    )
    assert most.status_code == 422
    at_limit = await client.post(
        ACCOUNTS, json=account_body(tags=[f"t{i}" for i in range(31)] + ["x" * 63]), headers=h
    )
    assert at_limit.status_code == 201, at_limit.text


async def test_only_an_admin_changes_tags(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any]
) -> None:
    account_id = await create_account(client, admin, tags=["eu"])

    response = await client.patch(
        f"{ACCOUNTS}/{account_id}", json={"tags": ["us"]}, headers=operator["headers"]
    )

    assert response.status_code == 403


async def test_accounts_are_listed_by_tag(
    client: httpx.AsyncClient, admin: dict[str, Any], viewer: dict[str, Any]
) -> None:
    eu = await create_account(client, admin, tags=["eu"])
    us = await create_account(client, admin, tags=["us", "warm"])
    await create_account(client, admin, tags=["asia"])
    await create_account(client, admin)

    def ids(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return [a["id"] for a in response.json()["items"]]

    h = viewer["headers"]
    one = await client.get(ACCOUNTS, params={"tag": "eu"}, headers=h)
    two = await client.get(ACCOUNTS, params=[("tag", "eu"), ("tag", "warm")], headers=h)
    none = await client.get(ACCOUNTS, params={"tag": "nowhere"}, headers=h)
    bad = await client.get(ACCOUNTS, params={"tag": "No Such"}, headers=h)
    too_many = await client.get(ACCOUNTS, params=[("tag", f"t{i}") for i in range(33)], headers=h)

    assert ids(one) == [eu]
    assert ids(two) == [eu, us]
    assert two.json()["next_cursor"] is None
    assert ids(none) == []
    assert (bad.status_code, too_many.status_code) == (422, 422)


async def test_a_campaign_targets_pools_and_shows_their_members(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any], db: Conn
) -> None:
    eu = await create_account(client, admin, tags=["eu"], daily_limit=300)
    await create_account(client, admin, tags=["eu", "us"], daily_limit=200, status="paused")
    await create_account(client, admin, tags=["asia"])
    today = datetime.now(UTC).date()
    await db.execute(
        "INSERT INTO account_daily_usage (account_id, day, reserved) VALUES ($1, $2, 120)",
        UUID(eu),
        today,
    )

    created = await client.post(
        "/api/campaigns", json=campaign_body(pools=["us", "eu", "eu"]), headers=operator["headers"]
    )

    assert created.status_code == 201, created.text
    campaign = created.json()
    assert campaign["pools"] == ["eu", "us"]
    assert campaign["account_ids"] == []
    assert campaign["pool"] == {
        "every_account": False,
        "accounts": {**NO_ACCOUNTS, "active": 1, "paused": 1},
        "remaining_today": 180,
    }
    listed = await client.get("/api/campaigns", headers=operator["headers"])
    assert listed.json()["items"][0]["pools"] == ["eu", "us"]


async def test_a_pool_may_hold_more_accounts_than_a_campaign_can_name(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn
) -> None:
    await db.execute(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit, tags)
        SELECT 'fleet ' || g, '127.0.0.1', 2525, 'none', 'news@example.com', 300, '{fleet}'
        FROM generate_series(1, 2500) AS g
        """
    )

    created = await client.post(
        "/api/campaigns", json=campaign_body(pools=["fleet"]), headers=operator["headers"]
    )

    assert created.status_code == 201, created.text
    assert created.json()["pool"]["accounts"]["active"] == 2500
    assert created.json()["pool"]["remaining_today"] == 2500 * 300


async def test_a_campaign_naming_a_tag_no_account_carries_is_refused(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any]
) -> None:
    archived = await create_account(client, admin, tags=["old"])
    await client.delete(f"{ACCOUNTS}/{archived}", headers=admin["headers"])
    await create_account(client, admin, tags=["eu"])

    answers = {}
    for pools in (["nowhere"], ["eu", "old"], ["Bad Tag"]):
        response = await client.post(
            "/api/campaigns", json=campaign_body(pools=pools), headers=operator["headers"]
        )
        assert response.status_code == 422, pools
        answers[pools[-1]] = response.json()
    assert "nowhere" in answers["nowhere"]["detail"]
    assert "old" in answers["old"]["detail"]
    # A malformed tag is named by where it is, not echoed.
    assert answers["Bad Tag"]["errors"][0]["loc"] == ["body", "pools", 0]
    assert "Bad Tag" not in str(answers["Bad Tag"])


async def test_a_campaign_whose_pool_has_no_active_account_cannot_start(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any]
) -> None:
    paused = await create_account(client, admin, tags=["eu"], status="paused")
    created = await client.post(
        "/api/campaigns", json=campaign_body(pools=["eu"]), headers=operator["headers"]
    )
    start = f"/api/campaigns/{created.json()['id']}/start"

    refused = await client.post(start, headers=operator["headers"])
    await client.patch(
        f"{ACCOUNTS}/{paused}", json={"status": "active"}, headers=operator["headers"]
    )
    started = await client.post(start, headers=operator["headers"])

    assert refused.status_code == 409
    assert "no active account" in refused.json()["detail"]
    assert started.status_code == 202, started.text
    assert started.json()["status"] == "running"


async def test_a_running_campaigns_pool_can_be_changed(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any]
) -> None:
    h = operator["headers"]
    await create_account(client, admin, tags=["eu"])
    named = await create_account(client, admin)
    campaign_id = (
        await client.post("/api/campaigns", json=campaign_body(pools=["eu"]), headers=h)
    ).json()["id"]
    await client.post(f"/api/campaigns/{campaign_id}/start", headers=h)
    url = f"/api/campaigns/{campaign_id}"

    changed = await client.patch(url, json={"pools": [], "account_ids": [named]}, headers=h)
    unknown = await client.patch(url, json={"pools": ["nowhere"]}, headers=h)
    null = await client.patch(url, json={"pools": None}, headers=h)

    assert changed.status_code == 200, changed.text
    assert (changed.json()["pools"], changed.json()["account_ids"]) == ([], [named])
    assert changed.json()["pool"]["accounts"]["active"] == 1
    assert (unknown.status_code, null.status_code) == (422, 422)


async def test_pools_list_members_capacity_and_campaigns_by_tag(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any], db: Conn
) -> None:
    eu = await create_account(client, admin, tags=["eu"], daily_limit=300)
    await create_account(client, admin, tags=["eu", "us"], daily_limit=200)
    await create_account(client, admin, tags=["us"], daily_limit=100, status="disabled")
    await db.execute(
        "INSERT INTO account_daily_usage (account_id, day, reserved) VALUES ($1, $2, 50)",
        UUID(eu),
        datetime.now(UTC).date(),
    )
    h = operator["headers"]
    running = await client.post("/api/campaigns", json=campaign_body(pools=["eu"]), headers=h)
    await client.post(f"/api/campaigns/{running.json()['id']}/start", headers=h)
    await client.post("/api/campaigns", json=campaign_body(pools=["eu", "us"]), headers=h)
    # A tag only a campaign names still shows, with no members: a pool that sends nothing.
    await db.execute("UPDATE accounts SET tags = '{}' WHERE tags = '{us}'")
    await db.execute("UPDATE accounts SET tags = '{eu}' WHERE tags = '{eu,us}'")

    listed = await client.get("/api/admin/pools", headers=h)
    one = await client.get("/api/admin/pools/eu", headers=h)
    unknown = await client.get("/api/admin/pools/nowhere", headers=h)
    invalid = await client.get("/api/admin/pools/No%20Such", headers=h)

    assert listed.status_code == 200, listed.text
    eu_pool, us_pool = listed.json()["items"]
    assert eu_pool == {
        "tag": "eu",
        "accounts": {**NO_ACCOUNTS, "active": 2},
        "daily_capacity": 500,
        "remaining_today": 450,
        "campaigns": {**NO_CAMPAIGNS, "draft": 1, "running": 1},
    }
    assert us_pool == {
        "tag": "us",
        "accounts": NO_ACCOUNTS,
        "daily_capacity": 0,
        "remaining_today": 0,
        "campaigns": {**NO_CAMPAIGNS, "draft": 1},
    }
    assert one.json() == eu_pool
    assert (unknown.status_code, invalid.status_code) == (404, 422)


async def test_pools_are_listed_a_page_at_a_time(
    client: httpx.AsyncClient, admin: dict[str, Any], viewer: dict[str, Any]
) -> None:
    await create_account(client, admin, tags=["a", "b", "c"])
    await create_account(client, admin, tags=["c", "d"])

    pages = await walk_pages(client, "/api/admin/pools", viewer["headers"], limit=3)

    assert [[p["tag"] for p in page] for page in pages] == [["a", "b", "c"], ["d"]]
    assert pages[0][2]["accounts"]["active"] == 2
