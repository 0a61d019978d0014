"""Importing OAuth2 credentials for an account: stored encrypted, shown never again."""

import uuid
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mailfleet_common.crypto import SecretBox, generate_key

from .conftest import Conn, account_body
from .test_cli import mailfleet

REFRESH_TOKEN = "1//0g-refresh-token-that-must-stay-secret"


def _service_account_key() -> dict[str, str]:
    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return {
        "type": "service_account",
        "project_id": "project",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "mailfleet@project.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


@pytest.fixture
async def account(client: httpx.AsyncClient, admin: dict[str, Any]) -> str:
    created = await client.post(
        "/api/admin/accounts", json=account_body(), headers=admin["headers"]
    )
    assert created.status_code == 201, created.text
    assert created.json()["auth_kind"] == "password"
    assert created.json()["oauth"] is None
    account_id: str = created.json()["id"]
    return account_id


async def test_a_refresh_token_is_stored_encrypted_and_never_returned(
    client: httpx.AsyncClient, admin: dict[str, Any], account: str, db: Conn, crypto_keys: str
) -> None:
    h = admin["headers"]
    body = {"provider": "microsoft", "refresh_token": REFRESH_TOKEN}
    imported = await client.post(f"/api/admin/accounts/{account}/oauth", json=body, headers=h)
    assert imported.status_code == 200, imported.text
    shown = imported.json()
    assert shown["auth_kind"] == "oauth2"
    assert shown["oauth"] == {
        "provider": "microsoft",
        "credential": "refresh_token",
        "subject": None,
        "consent": "granted",
        "access_token_expires_at": None,
        "refreshed_at": None,
    }
    raw = bytes(await db.fetchval("SELECT refresh_token_enc FROM account_oauth"))
    assert REFRESH_TOKEN.encode() not in raw
    assert SecretBox(crypto_keys.split(",")).decrypt(raw) == REFRESH_TOKEN
    for response in [
        imported,
        await client.get(f"/api/admin/accounts/{account}", headers=h),
        await client.get("/api/admin/accounts", headers=h),
    ]:
        assert response.status_code == 200
        assert REFRESH_TOKEN not in response.text


async def test_a_service_account_key_replaces_the_refresh_token_and_is_never_returned(
    client: httpx.AsyncClient, admin: dict[str, Any], account: str, db: Conn
) -> None:
    h = admin["headers"]
    url = f"/api/admin/accounts/{account}/oauth"
    first = {"provider": "google", "refresh_token": REFRESH_TOKEN}
    assert (await client.post(url, json=first, headers=h)).status_code == 200
    await db.execute("UPDATE account_oauth SET consent = 'needed'")
    key = _service_account_key()
    body = {"provider": "google", "service_account_key": key, "subject": "news@example.com"}
    imported = await client.post(url, json=body, headers=h)
    assert imported.status_code == 200, imported.text
    oauth = imported.json()["oauth"]
    assert (oauth["credential"], oauth["subject"], oauth["consent"]) == (
        "service_account",
        "news@example.com",
        "granted",
    )
    row = await db.fetchrow("SELECT refresh_token_enc, service_account_key_enc FROM account_oauth")
    assert row["refresh_token_enc"] is None
    assert b"PRIVATE KEY" not in bytes(row["service_account_key_enc"])
    shown = await client.get(f"/api/admin/accounts/{account}", headers=h)
    assert "PRIVATE KEY" not in shown.text


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"provider": "google"}, "either"),
        ({"provider": "google", "refresh_token": "x", "service_account_key": "KEY"}, "either"),
        (
            {"provider": "microsoft", "service_account_key": "KEY", "subject": "a@b.example"},
            "Google",
        ),
        ({"provider": "google", "service_account_key": "KEY"}, "subject"),
        ({"provider": "google", "refresh_token": "x", "subject": "a@b.example"}, "subject"),
        ({"provider": "yahoo", "refresh_token": "x"}, "provider"),
        ({"provider": "google", "refresh_token": ""}, "refresh_token"),
        (
            {"provider": "google", "service_account_key": {"type": "x"}, "subject": "a@b.example"},
            "service-account key",
        ),
        (
            {
                "provider": "google",
                "service_account_key": "BROKEN",
                "subject": "a@b.example",
            },
            "private_key",
        ),
    ],
)
async def test_invalid_imports_are_refused_with_a_problem(
    client: httpx.AsyncClient, admin: dict[str, Any], account: str, body: dict[str, Any], why: str
) -> None:
    key = _service_account_key()
    if body.get("service_account_key") == "KEY":
        body = dict(body, service_account_key=key)
    elif body.get("service_account_key") == "BROKEN":
        body = dict(body, service_account_key=dict(key, private_key="not a key"))
    response = await client.post(
        f"/api/admin/accounts/{account}/oauth", json=body, headers=admin["headers"]
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert why in response.text


async def test_only_an_admin_imports_credentials_of_an_existing_account(
    client: httpx.AsyncClient,
    admin: dict[str, Any],
    operator: dict[str, Any],
    viewer: dict[str, Any],
    account: str,
) -> None:
    body = {"provider": "google", "refresh_token": REFRESH_TOKEN}
    url = f"/api/admin/accounts/{account}/oauth"
    assert (await client.post(url, json=body)).status_code == 401
    for user in (operator, viewer):
        assert (await client.post(url, json=body, headers=user["headers"])).status_code == 403
    missing = await client.post(
        f"/api/admin/accounts/{uuid.uuid4()}/oauth", json=body, headers=admin["headers"]
    )
    assert missing.status_code == 404
    await client.delete(f"/api/admin/accounts/{account}", headers=admin["headers"])
    archived = await client.post(url, json=body, headers=admin["headers"])
    assert archived.status_code == 409


async def test_rotate_secrets_reencrypts_oauth_credentials_and_cached_tokens(
    client: httpx.AsyncClient,
    admin: dict[str, Any],
    account: str,
    db: Conn,
    database_dsn: str,
    crypto_keys: str,
) -> None:
    body = {"provider": "microsoft", "refresh_token": REFRESH_TOKEN}
    url = f"/api/admin/accounts/{account}/oauth"
    assert (await client.post(url, json=body, headers=admin["headers"])).status_code == 200
    old = SecretBox(crypto_keys.split(","))
    await db.execute(
        "UPDATE account_oauth SET access_token_enc = $1, access_expires_at = now()",
        old.encrypt("access"),
    )
    newest = generate_key()
    result = await mailfleet(database_dsn, f"{newest},{crypto_keys}", "rotate-secrets")
    assert result.exit_code == 0, result.output
    assert "the OAuth credentials and tokens of 1 accounts" in result.output
    row = await db.fetchrow("SELECT refresh_token_enc, access_token_enc FROM account_oauth")
    only_newest = SecretBox([newest])
    assert only_newest.decrypt(bytes(row["refresh_token_enc"])) == REFRESH_TOKEN
    assert only_newest.decrypt(bytes(row["access_token_enc"])) == "access"
