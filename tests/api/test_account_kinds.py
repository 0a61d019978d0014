"""Gmail-API and OAuth2 SMTP accounts in the accounts API: what each kind takes, and consent."""

from typing import Any

import httpx
import pytest

from .conftest import Conn, account_body

ACCOUNTS = "/api/admin/accounts"


def gmail_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "gmail",
        "kind": "gmail-api",
        "from_email": "news@example.com",
        "daily_limit": 1500,
    }
    return body | overrides


def oauth_smtp_body(**overrides: Any) -> dict[str, Any]:
    body = account_body(
        name="m365", auth_kind="oauth2", smtp_host="smtp.office365.com",
        smtp_username="news@example.com",
    )  # fmt: skip
    del body["smtp_password"]
    return body | overrides


async def test_a_gmail_api_account_has_no_smtp_settings_and_waits_for_consent(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    created = await client.post(ACCOUNTS, json=gmail_body(), headers=admin["headers"])
    assert created.status_code == 201, created.text
    account = created.json()
    assert (account["kind"], account["auth_kind"], account["oauth"]) == (
        "gmail-api",
        "oauth2",
        None,
    )
    assert [account[f] for f in ("smtp_host", "smtp_port", "smtp_tls", "smtp_username")] == [
        None
    ] * 4
    assert account["has_password"] is False
    assert account["status"] == "paused"
    assert account["status_reason"].startswith("consent needed: connect the account")
    shown = await client.get(f"{ACCOUNTS}/{account['id']}", headers=admin["headers"])
    assert shown.json()["status"] == "paused"


async def test_an_oauth2_smtp_account_signs_in_as_its_mailbox_without_passwords(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    imap = {"host": "outlook.office365.com", "username": "news@example.com"}
    created = await client.post(ACCOUNTS, json=oauth_smtp_body(imap=imap), headers=admin["headers"])
    assert created.status_code == 201, created.text
    account = created.json()
    assert (account["kind"], account["auth_kind"], account["has_password"]) == (
        "smtp",
        "oauth2",
        False,
    )
    assert account["imap"]["has_password"] is False
    assert account["imap"]["port"] == 993
    assert account["status"] == "paused"
    assert account["status_reason"].startswith("consent needed")


async def test_an_account_created_paused_keeps_the_reason_it_was_given(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    created = await client.post(
        ACCOUNTS, json=gmail_body(status="disabled"), headers=admin["headers"]
    )
    assert created.json()["status"] == "disabled"
    assert "consent" not in (created.json()["status_reason"] or "")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (gmail_body(smtp_host="smtp.gmail.com", smtp_port=587), "drop smtp_host, smtp_port"),
        (gmail_body(smtp_username="news@example.com"), "drop smtp_username"),
        (gmail_body(smtp_password="pw"), "drop smtp_password"),
        (gmail_body(auth_kind="password"), "auth_kind must be oauth2"),
        (
            gmail_body(imap={"host": "imap.gmail.com", "username": "news@example.com"}),
            "read through the Gmail API",
        ),
        (oauth_smtp_body(smtp_password="pw"), "not a password"),
        (oauth_smtp_body(smtp_username=None), "smtp_username"),
        (account_body(smtp_host=None), "an smtp account needs smtp_host"),
        ({k: v for k, v in account_body().items() if k != "smtp_tls"}, "needs smtp_tls"),
        (
            account_body(imap={"host": "imap.example.com", "username": "bounces"}),
            "imap.password",
        ),
        (gmail_body(kind="pop3"), "kind"),
    ],
)
async def test_a_combination_that_cannot_work_is_refused_with_its_reason(
    client: httpx.AsyncClient, admin: dict[str, Any], body: dict[str, Any], why: str
) -> None:
    response = await client.post(ACCOUNTS, json=body, headers=admin["headers"])
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert why in response.text


async def test_an_account_waiting_for_consent_resumes_once_credentials_are_imported(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any], db: Conn
) -> None:
    h = admin["headers"]
    account = (await client.post(ACCOUNTS, json=gmail_body(), headers=h)).json()
    url = f"{ACCOUNTS}/{account['id']}"
    for user in (admin, operator):
        refused = await client.patch(url, json={"status": "active"}, headers=user["headers"])
        assert refused.status_code == 409, refused.text
        assert "consent needed" in refused.json()["detail"]
    wrong = await client.post(
        f"{url}/oauth", json={"provider": "microsoft", "refresh_token": "t"}, headers=h
    )
    assert wrong.status_code == 422
    assert "provider must be google" in wrong.text

    imported = await client.post(
        f"{url}/oauth", json={"provider": "google", "refresh_token": "1//token"}, headers=h
    )
    assert imported.status_code == 200, imported.text
    assert (imported.json()["status"], imported.json()["status_reason"]) == ("active", None)
    assert imported.json()["rates_since"] is not None
    event = await db.fetchrow(
        "SELECT type, data FROM events WHERE account_id = $1 ORDER BY occurred_at DESC LIMIT 1",
        account["id"],
    )
    assert event["type"] == "account-resumed"


async def test_an_account_paused_for_another_reason_stays_paused_on_import(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    h = admin["headers"]
    account = (await client.post(ACCOUNTS, json=gmail_body(status="paused"), headers=h)).json()
    imported = await client.post(
        f"{ACCOUNTS}/{account['id']}/oauth",
        json={"provider": "google", "refresh_token": "1//token"},
        headers=h,
    )
    assert imported.json()["status"] == "paused"
    assert imported.json()["status_reason"] == "set paused by an admin via API"


async def test_a_consent_the_provider_refused_keeps_the_account_from_resuming(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn
) -> None:
    h = admin["headers"]
    account = (await client.post(ACCOUNTS, json=oauth_smtp_body(), headers=h)).json()
    url = f"{ACCOUNTS}/{account['id']}"
    body = {"provider": "microsoft", "refresh_token": "0.AXoA"}
    assert (await client.post(f"{url}/oauth", json=body, headers=h)).json()["status"] == "active"
    # As the sender does on invalid_grant: consent needed, the account paused.
    await db.execute("UPDATE account_oauth SET consent = 'needed'")
    await db.execute(
        "UPDATE accounts SET status = 'paused', status_reason = 'consent needed: invalid_grant'"
    )
    refused = await client.patch(url, json={"status": "active"}, headers=h)
    assert refused.status_code == 409
    again = await client.post(f"{url}/oauth", json=body, headers=h)
    assert again.json()["status"] == "active"


async def test_switching_an_smtp_account_to_oauth2_drops_its_password_and_waits_for_consent(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    h = admin["headers"]
    account = (
        await client.post(ACCOUNTS, json=account_body(smtp_username="news@example.com"), headers=h)
    ).json()
    url = f"{ACCOUNTS}/{account['id']}"
    kept = await client.patch(url, json={"auth_kind": "oauth2"}, headers=h)
    assert kept.status_code == 422
    assert "smtp_password: null" in kept.text
    switched = await client.patch(
        url, json={"auth_kind": "oauth2", "smtp_password": None}, headers=h
    )
    assert switched.status_code == 200, switched.text
    shown = switched.json()
    assert (shown["auth_kind"], shown["has_password"], shown["status"]) == (
        "oauth2",
        False,
        "paused",
    )
    assert shown["status_reason"].startswith("consent needed")
    changed_kind = await client.patch(url, json={"kind": "gmail-api"}, headers=h)
    assert changed_kind.status_code == 422
    assert (await client.patch(url, json={"auth_kind": None}, headers=h)).status_code == 422
