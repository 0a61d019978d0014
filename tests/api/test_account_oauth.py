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
    await _consent_under_way(db, account, old, b"state")
    newest = generate_key()
    result = await mailfleet(database_dsn, f"{newest},{crypto_keys}", "rotate-secrets")
    assert result.exit_code == 0, result.output
    assert "the OAuth credentials and tokens of 1 accounts" in result.output
    assert "the verifiers of 1 consents under way" in result.output
    row = await db.fetchrow("SELECT refresh_token_enc, access_token_enc FROM account_oauth")
    only_newest = SecretBox([newest])
    assert only_newest.decrypt(bytes(row["refresh_token_enc"])) == REFRESH_TOKEN
    assert only_newest.decrypt(bytes(row["access_token_enc"])) == "access"
    verifier = await db.fetchval("SELECT code_verifier_enc FROM oauth_consents")
    assert only_newest.decrypt(bytes(verifier)) == "verifier"


async def _consent_under_way(db: Conn, account_id: str, box: SecretBox, state: bytes) -> None:
    await db.execute(
        "INSERT INTO oauth_consents (state_hash, account_id, provider, code_verifier_enc,"
        " expires_at) VALUES ($1, $2, 'google', $3, now() + interval '15 minutes')",
        state,
        uuid.UUID(account_id),
        box.encrypt("verifier"),
    )


async def test_check_keys_finds_and_forgets_oauth_secrets_no_key_decrypts(
    client: httpx.AsyncClient,
    admin: dict[str, Any],
    db: Conn,
    database_dsn: str,
    crypto_keys: str,
) -> None:
    h = admin["headers"]
    accounts = []
    for name in ("lost", "cache", "kept"):
        # OAuth2 accounts with no password: only their OAuth2 secrets are at stake.
        body = account_body(
            name=name, auth_kind="oauth2", smtp_username="news@example.com", smtp_password=None
        )
        created = await client.post("/api/admin/accounts", json=body, headers=h)
        accounts.append(created.json()["id"])
        body = {"provider": "google", "refresh_token": f"1//{name}"}
        url = f"/api/admin/accounts/{accounts[-1]}/oauth"
        assert (await client.post(url, json=body, headers=h)).json()["status"] == "active"
    lost, cache, kept = accounts
    old, new_key = SecretBox(crypto_keys.split(",")), generate_key()
    new = SecretBox([new_key])
    # "cache" keeps credentials the new key reads, but an access token of the old key; "kept"
    # has only new-key secrets.
    for account_id, box in ((cache, new), (kept, new)):
        await db.execute(
            "UPDATE account_oauth SET refresh_token_enc = $2 WHERE account_id = $1",
            uuid.UUID(account_id),
            box.encrypt("1//refresh"),
        )
    await db.execute(
        "UPDATE account_oauth SET access_token_enc = $2, access_expires_at = now() "
        "WHERE account_id = $1",
        uuid.UUID(cache),
        old.encrypt("access"),
    )
    await _consent_under_way(db, kept, old, b"old-state")
    await _consent_under_way(db, kept, new, b"new-state")

    found = await mailfleet(database_dsn, new_key, "check-keys")
    assert found.exit_code == 2, found.output
    assert "the OAuth2 secrets of 2 of 3 OAuth2 accounts cannot be decrypted" in found.output
    assert "credentials lost: 'lost'" in found.output
    assert "1 consents under way cannot be finished" in found.output

    forgotten = await mailfleet(database_dsn, new_key, "check-keys", "--forget")
    assert forgotten.exit_code == 0, forgotten.output
    assert (
        "the OAuth2 credentials of 1 accounts (paused for consent), 1 cached access tokens "
        "and 1 consents under way"
    ) in forgotten.output
    rows = {
        str(r["id"]): r
        for r in await db.fetch(
            "SELECT a.id, a.status, a.status_reason, o.account_id IS NOT NULL AS has_oauth,"
            " o.access_token_enc FROM accounts a LEFT JOIN account_oauth o ON o.account_id = a.id"
        )
    }
    assert (rows[lost]["status"], rows[lost]["has_oauth"]) == ("paused", False)
    assert rows[lost]["status_reason"].startswith("consent needed: its OAuth2 credentials")
    assert (rows[cache]["status"], rows[cache]["has_oauth"]) == ("active", True)
    assert rows[cache]["access_token_enc"] is None
    assert rows[kept]["status"] == "active"
    consents = await db.fetch(
        "SELECT state_hash, code_verifier_enc IS NULL AS ended FROM oauth_consents"
        " ORDER BY state_hash"
    )
    assert [(bytes(r["state_hash"]), r["ended"]) for r in consents] == [
        (b"new-state", False),
        (b"old-state", True),
    ]
    assert (await mailfleet(database_dsn, new_key, "check-keys")).exit_code == 0

    # Connecting the account again resumes it.
    body = {"provider": "google", "refresh_token": "1//again"}
    again = await client.post(f"/api/admin/accounts/{lost}/oauth", json=body, headers=h)
    assert again.json()["status"] == "active"
