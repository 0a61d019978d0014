"""SMTP accounts: secrets at rest, status changes, usage and limits."""

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from mailfleet_common.crypto import SecretBox

from .conftest import FEEDBACK_FIELDS, Conn, account_body, feedback, walk_pages

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
    assert (await client.get("/api/admin/accounts", headers=h)).json()["items"] == []
    listed = await client.get("/api/admin/accounts", params={"include_archived": True}, headers=h)
    assert [a["id"] for a in listed.json()["items"]] == [account_id]
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


async def test_accounts_list_pages_by_cursor_oldest_first(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    h = admin["headers"]
    for n in range(5):
        await client.post("/api/admin/accounts", json=account_body(name=f"a{n}"), headers=h)
    pages = await walk_pages(client, "/api/admin/accounts", h, limit=2)
    assert [[a["name"] for a in page] for page in pages] == [["a0", "a1"], ["a2", "a3"], ["a4"]]
    bad = await client.get("/api/admin/accounts", params={"cursor": "bm90IGEgY3Vyc29y"}, headers=h)
    assert bad.status_code == 422


# --- IMAP settings ------------------------------------------------------------------------

IMAP_PASSWORD = "s3cret-imap-password"


def imap_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "host": "imap.example.com",
        "username": "bounces@example.com",
        "password": IMAP_PASSWORD,
    }
    body.update(overrides)
    return body


async def checkpoint(db: Conn, account_id: str) -> None:
    await db.execute(
        "INSERT INTO mailbox_checkpoints (account_id, folder, uidvalidity, last_uid)"
        " VALUES ($1, 'INBOX', 7, 42) ON CONFLICT (account_id) DO NOTHING",
        uuid.UUID(account_id),
    )


async def has_checkpoint(db: Conn, account_id: str) -> bool:
    found = await db.fetchval(
        "SELECT count(*) FROM mailbox_checkpoints WHERE account_id = $1", uuid.UUID(account_id)
    )
    return bool(found)


async def test_imap_password_is_encrypted_at_rest_and_never_returned(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn, crypto_keys: str
) -> None:
    h = admin["headers"]
    created = await client.post(
        "/api/admin/accounts", json=account_body(imap=imap_body()), headers=h
    )

    assert created.status_code == 201, created.text
    account = created.json()
    assert account["imap"] == {
        "host": "imap.example.com",
        "port": 993,
        "tls": "implicit",
        "username": "bounces@example.com",
        "folder": "INBOX",
        "processed_folder": None,
        "has_password": True,
    }
    raw = bytes(
        await db.fetchval(
            "SELECT imap_password_enc FROM accounts WHERE id = $1", uuid.UUID(account["id"])
        )
    )
    assert IMAP_PASSWORD.encode() not in raw
    assert SecretBox(crypto_keys.split(",")).decrypt(raw) == IMAP_PASSWORD
    url = f"/api/admin/accounts/{account['id']}"
    responses = [
        created,
        await client.get(url, headers=h),
        await client.get("/api/admin/accounts", headers=h),
        await client.patch(url, json={"imap": {"folder": "Bounces"}}, headers=h),
        await client.get("/api/admin/stats", headers=h),
    ]
    for response in responses:
        assert response.status_code in (200, 201), response.text
        assert IMAP_PASSWORD not in response.text
        assert '"password":' not in response.text  # no field (auth_kind may say "password")


async def test_imap_settings_change_in_part_and_null_removes_them(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn, crypto_keys: str
) -> None:
    h = admin["headers"]
    account = (await client.post("/api/admin/accounts", json=account_body(), headers=h)).json()
    url = f"/api/admin/accounts/{account['id']}"
    assert account["imap"] is None

    incomplete = await client.patch(url, json={"imap": {"host": "imap.example.com"}}, headers=h)
    assert incomplete.status_code == 422
    assert "imap.username" in incomplete.json()["detail"]
    assert "imap.password" in incomplete.json()["detail"]

    added = await client.patch(
        url,
        json={"imap": imap_body(tls="starttls", processed_folder="Processed")},
        headers=h,
    )
    assert added.status_code == 200, added.text
    assert added.json()["imap"]["port"] == 143
    assert added.json()["imap"]["processed_folder"] == "Processed"

    # The same mailbox: where the bouncer had got to still holds.
    await checkpoint(db, account["id"])
    same_mailbox = await client.patch(
        url, json={"imap": {"port": 1143, "password": "rotated", "tls": "none"}}, headers=h
    )
    assert same_mailbox.json()["imap"] == {
        "host": "imap.example.com",
        "port": 1143,
        "tls": "none",
        "username": "bounces@example.com",
        "folder": "INBOX",
        "processed_folder": "Processed",
        "has_password": True,
    }
    assert await has_checkpoint(db, account["id"])
    stored = await db.fetchval(
        "SELECT imap_password_enc FROM accounts WHERE id = $1", uuid.UUID(account["id"])
    )
    assert SecretBox(crypto_keys.split(",")).decrypt(bytes(stored)) == "rotated"

    # Another host, user or folder is another mailbox: read it from the start.
    for change in ({"folder": "Returns"}, {"username": "other"}, {"host": "imap2.example.com"}):
        await checkpoint(db, account["id"])
        changed = await client.patch(url, json={"imap": change}, headers=h)
        assert changed.status_code == 200, changed.text
        assert not await has_checkpoint(db, account["id"]), change

    kept = await client.patch(url, json={"imap": {"processed_folder": None}}, headers=h)
    assert kept.json()["imap"]["processed_folder"] is None

    await checkpoint(db, account["id"])
    removed = await client.patch(url, json={"imap": None}, headers=h)
    assert removed.status_code == 200, removed.text
    assert removed.json()["imap"] is None
    assert (await client.get(url, headers=h)).json()["imap"] is None
    assert not await has_checkpoint(db, account["id"])
    columns = await db.fetchrow(
        "SELECT imap_host, imap_port, imap_tls, imap_username, imap_password_enc, imap_folder,"
        " imap_processed_folder FROM accounts WHERE id = $1",
        uuid.UUID(account["id"]),
    )
    assert columns is not None
    assert dict(columns) == {
        "imap_host": None,
        "imap_port": None,
        "imap_tls": None,
        "imap_username": None,
        "imap_password_enc": None,
        "imap_folder": "INBOX",
        "imap_processed_folder": None,
    }


async def test_imap_input_is_validated(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any]
) -> None:
    h = admin["headers"]
    bad = [
        imap_body(port=0),
        imap_body(port=65536),
        imap_body(tls="ssl"),
        imap_body(folder=""),
        imap_body(folder="   "),
        imap_body(folder="INBOX\r\nA1 DELETE INBOX"),
        imap_body(processed_folder="Done\n"),
        imap_body(processed_folder="INBOX"),
        imap_body(username=""),
        imap_body(username="a\r\nb"),
        imap_body(host="bad host"),
        imap_body(password=""),
        {k: v for k, v in imap_body().items() if k != "password"},
        imap_body(unknown="x"),
    ]
    for imap in bad:
        response = await client.post("/api/admin/accounts", json=account_body(imap=imap), headers=h)
        assert response.status_code == 422, imap
        assert response.json()["detail"], imap

    account = (
        await client.post(
            "/api/admin/accounts",
            json=account_body(imap=imap_body(processed_folder="Done")),
            headers=h,
        )
    ).json()
    url = f"/api/admin/accounts/{account['id']}"
    for imap in (
        {"password": None},
        {"host": None},
        {"folder": None},
        {"folder": "Done"},  # the processed folder
        {"port": "993x"},
    ):
        response = await client.patch(url, json={"imap": imap}, headers=h)
        assert response.status_code == 422, (imap, response.text)
    refused = await client.patch(url, json={"imap": None}, headers=operator["headers"])
    assert refused.status_code == 403
    assert (await client.get(url, headers=h)).json()["imap"]["folder"] == "INBOX"


# --- resuming and health ------------------------------------------------------------------


async def test_resuming_a_paused_account_restarts_its_rates(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any], db: Conn
) -> None:
    account = (
        await client.post("/api/admin/accounts", json=account_body(), headers=admin["headers"])
    ).json()
    url = f"/api/admin/accounts/{account['id']}"
    h = operator["headers"]
    assert account["rates_since"] is None

    paused = await client.patch(url, json={"status": "paused"}, headers=h)
    assert paused.json()["rates_since"] is None
    before = await db.fetchval("SELECT now()")
    resumed = await client.patch(url, json={"status": "active"}, headers=h)
    after = await db.fetchval("SELECT now()")

    assert resumed.status_code == 200, resumed.text
    rates_since = datetime.fromisoformat(resumed.json()["rates_since"])
    assert before <= rates_since <= after
    # Setting active again, or anything else, leaves the window where it is.
    again = await client.patch(url, json={"status": "active"}, headers=h)
    renamed = await client.patch(url, json={"name": "x"}, headers=admin["headers"])
    assert (
        again.json()["rates_since"]
        == renamed.json()["rates_since"]
        == resumed.json()["rates_since"]
    )


async def test_health_counts_feedback_on_the_newest_sends_since_the_resume(
    client: httpx.AsyncClient,
    admin: dict[str, Any],
    viewer: dict[str, Any],
    db: Conn,
    campaign_id: str,
) -> None:
    account = (
        await client.post("/api/admin/accounts", json=account_body(), headers=admin["headers"])
    ).json()
    account_id = uuid.UUID(account["id"])
    await db.execute(
        "UPDATE accounts SET rates_since = now() - interval '10 days', status = 'paused',"
        " status_reason = 'complaint rate 0.5%' WHERE id = $1",
        account_id,
    )
    # (days ago sent, bounce, complained, replied), newest first. The last two were sent
    # before rates_since and never count.
    sends = [
        (1, "hard", False, False),
        (2, None, True, False),
        (3, "soft", False, True),
        (4, None, False, False),
        (5, "hard", False, False),
        (11, "hard", True, False),
        (12, "hard", False, False),
    ]
    for n, (days, bounce, complained, replied) in enumerate(sends):
        await db.execute(
            """
            INSERT INTO messages (campaign_id, email, status, account_id, sent_at, bounce,
                                  bounced_at, complained_at, replied_at)
            VALUES ($1, $2, 'sent', $3, now() - $4 * interval '1 day', $5,
                    CASE WHEN $5::text IS NOT NULL THEN now() END,
                    CASE WHEN $6 THEN now() END, CASE WHEN $7 THEN now() END)
            """,
            uuid.UUID(campaign_id),
            f"r{n}@example.com",
            account_id,
            days,
            bounce,
            complained,
            replied,
        )
    # Queued and unsent messages of the account are not sends.
    await db.execute(
        "INSERT INTO messages (campaign_id, email, status, account_id)"
        " VALUES ($1, $2, 'assigned', $3)",
        uuid.UUID(campaign_id),
        "waiting@example.com",
        account_id,
    )
    url = f"/api/admin/accounts/{account_id}/health"

    health = await client.get(url, headers=viewer["headers"])
    newest_two = await client.get(url, params={"window": 2}, headers=viewer["headers"])

    assert health.status_code == 200, health.text
    body = health.json()
    assert datetime.fromisoformat(body.pop("rates_since")) < datetime.now(UTC)
    assert body == {
        "account_id": str(account_id),
        "status": "paused",
        "status_reason": "complaint rate 0.5%",
        "window": 1000,
        "mailbox": None,
        **feedback(5, 2, 1, 1, 1, 0.4, 0.2, 0.2, 0.2),
    }
    two = newest_two.json()
    assert two["window"] == 2
    assert {k: two[k] for k in FEEDBACK_FIELDS} == feedback(2, 1, 0, 1, 0, 0.5, 0.0, 0.5, 0.0)

    h = viewer["headers"]
    for window in (0, 100_001, "x"):
        response = await client.get(url, params={"window": window}, headers=h)
        assert response.status_code == 422, window
    missing = await client.get(f"/api/admin/accounts/{uuid.uuid4()}/health", headers=h)
    assert missing.status_code == 404
    assert (await client.get(url)).status_code == 401
