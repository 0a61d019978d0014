"""Login, tokens, API keys and the role required by every route."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from mailfleet_api.auth import InsecureSecretError
from mailfleet_api.main import create_app
from mailfleet_api.settings import AuthSettings, Settings

from .conftest import PASSWORD, Conn, UserFactory, account_body, campaign_body, walk_pages

# /oauth/callback: the consenting browser's, authorized by its single-use state instead.
ANONYMOUS_ROUTES = {
    "/api/admin/login", "/health", "/ready", "/metrics",
    "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/oauth/callback",
}  # fmt: skip


def _concrete(path: str) -> str:
    for name in ("key_id", "account_id", "campaign_id"):
        path = path.replace("{" + name + "}", str(uuid.uuid4()))
    for name in ("suppression_id", "report_id"):
        path = path.replace("{" + name + "}", "1")
    return path


def _all_operations(app: FastAPI) -> list[tuple[str, str]]:
    return sorted(
        (method, route.path)
        for route in iter_route_contexts(app.routes)
        for method in (route.methods or ())
        if method != "HEAD" and route.path is not None
    )


async def test_every_route_refuses_anonymous_callers_except_login_and_ops(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    operations = _all_operations(app)
    assert len(operations) > 20
    for method, path in operations:
        response = await client.request(method, _concrete(path), json={})
        if path in ANONYMOUS_ROUTES:
            assert response.status_code != 401, (method, path)
        else:
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"


async def test_every_protected_route_refuses_a_garbage_token(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    headers = {"Authorization": "Bearer not-a-token"}
    for method, path in _all_operations(app):
        if path not in ANONYMOUS_ROUTES:
            response = await client.request(method, _concrete(path), json={}, headers=headers)
            assert response.status_code == 401, (method, path)


async def test_login_returns_a_token_that_authenticates(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user("viewer", email="Reader@Example.com")
    response = await client.post(
        "/api/admin/login", json={"email": "reader@example.com", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert 0 < body["expires_in"] <= 3600
    assert datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC)
    me = {"Authorization": f"Bearer {body['access_token']}"}
    assert (await client.get("/api/campaigns", headers=me)).status_code == 200
    assert user["id"]


async def test_login_with_a_wrong_password_or_unknown_email_is_refused(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    await make_user("admin", email="boss@example.com")
    for email, password in (
        ("boss@example.com", "wrong password!"),
        ("nobody@example.com", PASSWORD),
    ):
        response = await client.post(
            "/api/admin/login", json={"email": email, "password": password}
        )
        assert response.status_code == 401
        assert response.json()["detail"] == "invalid email or password"


async def test_disabled_user_can_neither_log_in_nor_use_a_token(
    client: httpx.AsyncClient, make_user: UserFactory, db: Conn
) -> None:
    user = await make_user("admin", email="gone@example.com")
    await db.execute("UPDATE users SET disabled = true WHERE id = $1", user["id"])
    login = await client.post(
        "/api/admin/login", json={"email": "gone@example.com", "password": PASSWORD}
    )
    assert login.status_code == 401
    assert (await client.get("/api/campaigns", headers=user["headers"])).status_code == 401


async def test_expired_token_is_refused(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    user = await make_user("admin", now=datetime.now(UTC) - timedelta(hours=2))
    response = await client.get("/api/campaigns", headers=user["headers"])
    assert response.status_code == 401
    assert response.json()["detail"] == "access token expired"


async def test_token_signed_with_another_secret_is_refused(
    client: httpx.AsyncClient, make_user: UserFactory, settings: Settings
) -> None:
    user = await make_user("admin")
    from mailfleet_api.auth import TokenSigner

    other = TokenSigner.from_settings(AuthSettings(jwt_secret="another-secret-" + "x" * 40))
    token, _ = other.issue(user["id"])
    response = await client.get("/api/campaigns", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


def test_app_refuses_to_start_with_a_short_or_empty_jwt_secret(settings: Settings) -> None:
    for secret in ("", "short"):
        with pytest.raises(InsecureSecretError):
            create_app(settings.model_copy(update={"auth": AuthSettings(jwt_secret=secret)}))


def test_app_starts_with_an_ephemeral_secret_only_when_asked(settings: Settings) -> None:
    dev = AuthSettings(jwt_secret="", dev_ephemeral_secret=True)
    assert create_app(settings.model_copy(update={"auth": dev})) is not None


async def test_api_key_is_shown_once_works_and_stops_working_when_revoked(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn
) -> None:
    created = await client.post(
        "/api/admin/api-keys", json={"name": "ci", "role": "operator"}, headers=admin["headers"]
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    prefix = created.json()["prefix"]
    assert key.startswith(f"mf_{prefix}_")

    stored = await db.fetchrow("SELECT key_hash FROM api_keys WHERE prefix = $1", prefix)
    assert key.encode() not in bytes(stored["key_hash"])
    listed = await client.get("/api/admin/api-keys", headers=admin["headers"])
    assert len(listed.json()["items"]) == 1
    assert key not in listed.text
    assert "key" not in listed.json()["items"][0]

    with_key = {"Authorization": f"Bearer {key}"}
    response = await client.post("/api/campaigns", json=campaign_body(), headers=with_key)
    assert response.status_code == 201, response.text
    # An operator key cannot do admin things even though its owner is an admin.
    assert (await client.get("/api/admin/users", headers=with_key)).status_code == 403

    key_id = created.json()["id"]
    revoked = await client.delete(f"/api/admin/api-keys/{key_id}", headers=admin["headers"])
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert (await client.get("/api/campaigns", headers=with_key)).status_code == 401


async def test_api_key_with_a_wrong_secret_is_refused(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    created = await client.post("/api/admin/api-keys", json={"name": "x"}, headers=admin["headers"])
    prefix = created.json()["prefix"]
    forged = {"Authorization": f"Bearer mf_{prefix}_{'A' * 43}"}
    assert (await client.get("/api/campaigns", headers=forged)).status_code == 401


async def test_revoking_an_unknown_key_is_not_found_and_a_malformed_id_is_invalid(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    missing = await client.delete(f"/api/admin/api-keys/{uuid.uuid4()}", headers=admin["headers"])
    assert missing.status_code == 404
    malformed = await client.delete("/api/admin/api-keys/not-a-uuid", headers=admin["headers"])
    assert malformed.status_code == 422


async def test_viewer_can_read_but_not_write(
    client: httpx.AsyncClient, viewer: dict[str, Any], campaign_id: str
) -> None:
    h = viewer["headers"]
    for path in (
        "/api/campaigns",
        f"/api/campaigns/{campaign_id}",
        "/api/admin/accounts",
        "/api/admin/stats",
        "/api/queue/status",
    ):
        assert (await client.get(path, headers=h)).status_code == 200, path
    writes = [
        ("POST", "/api/campaigns", campaign_body()),
        ("POST", f"/api/campaigns/{campaign_id}/start", None),
        ("POST", f"/api/campaigns/{campaign_id}/pause", None),
        ("DELETE", f"/api/campaigns/{campaign_id}", None),
        ("POST", "/api/queue/enqueue", {"campaign_id": campaign_id, "recipients": []}),
        ("POST", "/api/queue/clear", {}),
        ("POST", "/api/admin/accounts", account_body()),
        (
            "POST",
            "/api/admin/users",
            {"email": "x@example.com", "password": "p" * 12, "role": "admin"},
        ),
        ("POST", "/api/admin/api-keys", {"name": "k"}),
    ]
    for method, path, body in writes:
        response = await client.request(method, path, json=body, headers=h)
        assert response.status_code == 403, (method, path, response.text)


async def test_operator_cannot_manage_accounts_users_or_keys(
    client: httpx.AsyncClient, operator: dict[str, Any], admin: dict[str, Any]
) -> None:
    account = await client.post(
        "/api/admin/accounts", json=account_body(), headers=admin["headers"]
    )
    account_id = account.json()["id"]
    h = operator["headers"]
    refused = [
        ("POST", "/api/admin/accounts", account_body()),
        ("PATCH", f"/api/admin/accounts/{account_id}", {"daily_limit": 10}),
        ("PATCH", f"/api/admin/accounts/{account_id}", {"status": "disabled"}),
        ("DELETE", f"/api/admin/accounts/{account_id}", None),
        (
            "POST",
            "/api/admin/users",
            {"email": "x@example.com", "password": "p" * 12, "role": "viewer"},
        ),
        ("GET", "/api/admin/users", None),
        ("POST", "/api/admin/api-keys", {"name": "k"}),
        ("GET", "/api/admin/api-keys", None),
    ]
    for method, path, body in refused:
        response = await client.request(method, path, json=body, headers=h)
        assert response.status_code == 403, (method, path, response.text)
    assert (await client.get(f"/api/admin/accounts/{account_id}", headers=h)).status_code == 200
    assert (await client.get("/api/admin/stats", headers=h)).status_code == 200


async def test_admin_creates_and_lists_users_with_pagination(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    h = admin["headers"]
    for n in range(3):
        body = {"email": f"user{n}@example.com", "password": "a-long-password", "role": "viewer"}
        response = await client.post("/api/admin/users", json=body, headers=h)
        assert response.status_code == 201, response.text
        assert "password" not in response.text
    duplicate = await client.post(
        "/api/admin/users",
        json={"email": "USER0@example.com", "password": "a-long-password", "role": "viewer"},
        headers=h,
    )
    assert duplicate.status_code == 409
    pages = await walk_pages(client, "/api/admin/users", h, limit=2)
    emails = [u["email"] for u in pages[0] + pages[1]]
    assert [len(p) for p in pages] == [2, 2]
    assert emails == [admin["email"], "user0@example.com", "user1@example.com", "user2@example.com"]
    assert (await client.get("/api/admin/users", params={"limit": 0}, headers=h)).status_code == 422


async def test_new_user_can_log_in(client: httpx.AsyncClient, admin: dict[str, Any]) -> None:
    body = {"email": "new@example.com", "password": "a-long-password", "role": "operator"}
    await client.post("/api/admin/users", json=body, headers=admin["headers"])
    login = await client.post(
        "/api/admin/login", json={"email": "new@example.com", "password": "a-long-password"}
    )
    assert login.status_code == 200
