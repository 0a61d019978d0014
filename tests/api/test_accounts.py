"""SMTP accounts: secrets at rest, status changes, usage and limits."""

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from mailfleet_common.crypto import SecretBox

from .conftest import Conn, account_body

SMTP_PASSWORD = "s3cret-smtp-password"


async def test_account_password_is_encrypted_at_rest_and_never_returned(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn, crypto_keys: str
) -> None:
    h = admin["headers"]
    created = await client.post("/api/admin/accounts", json=account_body(), headers=h)
    assert created.status_code == 201, created.text
    account = created.json()
    assert account["has_password"] is True
    raw = bytes(
        await db.fetchval(
            "SELECT smtp_password_enc FROM accounts WHERE id = $1", uuid.UUID(account["id"])
        )
    )
    assert SMTP_PASSWORD.encode() not in raw
    assert SecretBox(crypto_keys.split(",")).decrypt(raw) == SMTP_PASSWORD

    responses = [
        created,
        await client.get(f"/api/admin/accounts/{account['id']}", headers=h),
        await client.get("/api/admin/accounts", headers=h),
        await client.patch(
            f"/api/admin/accounts/{account['id']}", json={"name": "renamed"}, headers=h
        ),
        await client.get("/api/admin/stats", headers=h),
        await client.delete(f"/api/admin/accounts/{account['id']}", headers=h),
    ]
    for response in responses:
        assert response.status_code == 200 or response is created
        assert SMTP_PASSWORD not in response.text
        assert "smtp_password" not in response.text


async def test_account_password_can_be_replaced_and_removed(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn, crypto_keys: str
) -> None:
    h = admin["headers"]
    account_id = (await client.post("/api/admin/accounts", json=account_body(), headers=h)).json()[
        "id"
    ]
    url = f"/api/admin/accounts/{account_id}"
    await client.patch(url, json={"smtp_password": "new-password"}, headers=h)
    raw = await db.fetchval(
        "SELECT smtp_password_enc FROM accounts WHERE id = $1", uuid.UUID(account_id)
    )
    assert SecretBox(crypto_keys.split(",")).decrypt(bytes(raw)) == "new-password"
    removed = await client.patch(url, json={"smtp_password": None}, headers=h)
    assert removed.json()["has_password"] is False


async def test_account_shows_todays_usage_and_warmup_limit(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn
) -> None:
    body = account_body(
        daily_limit=1000, warmup_enabled=True, warmup_initial=50, warmup_increment=10
    )
    account = (await client.post("/api/admin/accounts", json=body, headers=admin["headers"])).json()
    today = datetime.now(UTC).date()
    assert account["warmup_enabled"] is True
    assert account["warmup_started_on"] == today.isoformat()
    assert account["today"]["effective_limit"] == 50
    await db.execute(
        "INSERT INTO account_daily_usage (account_id, day, reserved, sent) VALUES ($1, $2, 7, 5)",
        uuid.UUID(account["id"]),
        today,
    )
    shown = (
        await client.get(f"/api/admin/accounts/{account['id']}", headers=admin["headers"])
    ).json()
    assert shown["today"] == {
        "day": today.isoformat(),
        "reserved": 7,
        "sent": 5,
        "failed": 0,
        "effective_limit": 50,
    }
    plain = (
        await client.patch(
            f"/api/admin/accounts/{account['id']}",
            json={"warmup_enabled": False},
            headers=admin["headers"],
        )
    ).json()
    assert plain["warmup_started_on"] is None
    assert plain["today"]["effective_limit"] == 1000


async def test_operator_resumes_a_paused_account_which_clears_the_reason(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any], db: Conn
) -> None:
    account_id = (
        await client.post("/api/admin/accounts", json=account_body(), headers=admin["headers"])
    ).json()["id"]
    await db.execute(
        "UPDATE accounts SET status = 'paused', status_reason = '535 auth failed' WHERE id = $1",
        uuid.UUID(account_id),
    )
    resumed = await client.patch(
        f"/api/admin/accounts/{account_id}", json={"status": "active"}, headers=operator["headers"]
    )
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "active"
    assert resumed.json()["status_reason"] is None


async def test_operator_cannot_reactivate_an_account_an_admin_disabled(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any]
) -> None:
    account_id = (
        await client.post(
            "/api/admin/accounts", json=account_body(status="disabled"), headers=admin["headers"]
        )
    ).json()["id"]
    response = await client.patch(
        f"/api/admin/accounts/{account_id}", json={"status": "active"}, headers=operator["headers"]
    )
    assert response.status_code == 403


async def test_deleting_an_account_archives_it(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    h = admin["headers"]
    account_id = (await client.post("/api/admin/accounts", json=account_body(), headers=h)).json()[
        "id"
    ]
    archived = await client.delete(f"/api/admin/accounts/{account_id}", headers=h)
    assert archived.status_code == 200
    assert archived.json()["status"] == "archived"
    assert (await client.get("/api/admin/accounts", headers=h)).json()["total"] == 0
    listed = await client.get("/api/admin/accounts", params={"include_archived": True}, headers=h)
    assert listed.json()["total"] == 1
    again = await client.patch(f"/api/admin/accounts/{account_id}", json={"name": "x"}, headers=h)
    assert again.status_code == 409


async def test_account_input_is_validated(client: httpx.AsyncClient, admin: dict[str, Any]) -> None:
    h = admin["headers"]
    bad = [
        account_body(name="evil\r\nBcc: victim@example.com"),
        account_body(from_name="x\nBcc: y@example.com"),
        account_body(from_email="not an address"),
        account_body(smtp_tls="ssl"),
        account_body(smtp_port=0),
        account_body(daily_limit=-1),
        account_body(smtp_host="bad host\r\n"),
    ]
    for body in bad:
        response = await client.post("/api/admin/accounts", json=body, headers=h)
        assert response.status_code == 422, body
    account_id = (await client.post("/api/admin/accounts", json=account_body(), headers=h)).json()[
        "id"
    ]
    assert (
        await client.patch(f"/api/admin/accounts/{account_id}", json={"name": None}, headers=h)
    ).status_code == 422


async def test_unknown_account_is_not_found(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    h = admin["headers"]
    missing = str(uuid.uuid4())
    assert (await client.get(f"/api/admin/accounts/{missing}", headers=h)).status_code == 404
    assert (
        await client.patch(f"/api/admin/accounts/{missing}", json={"name": "x"}, headers=h)
    ).status_code == 404
    assert (await client.delete(f"/api/admin/accounts/{missing}", headers=h)).status_code == 404
    assert (await client.get("/api/admin/accounts/123", headers=h)).status_code == 422


async def test_accounts_list_paginates_with_a_total(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    h = admin["headers"]
    for n in range(5):
        await client.post("/api/admin/accounts", json=account_body(name=f"a{n}"), headers=h)
    page = (
        await client.get("/api/admin/accounts", params={"limit": 2, "offset": 4}, headers=h)
    ).json()
    assert page["total"] == 5
    assert [a["name"] for a in page["items"]] == ["a4"]
