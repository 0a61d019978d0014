"""Every error is an RFC 9457 problem document that echoes nothing of the request."""

from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from fastapi import FastAPI
from mailfleet_api.main import create_app
from mailfleet_api.pages import encode_cursor
from mailfleet_api.settings import Settings

from .conftest import account_body, campaign_body
from .test_auth import _all_operations, _concrete

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == PROBLEM, response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    return body


def _body_operations(app: FastAPI) -> list[tuple[str, str]]:
    return [(m, p) for m, p in _all_operations(app) if m in ("POST", "PATCH", "PUT")]


async def test_a_body_that_is_not_utf8_is_refused_on_every_route(
    app: FastAPI, client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    for headers in ({}, admin["headers"]):
        for content_type in ("text/plain", "application/json"):
            for method, path in _body_operations(app):
                response = await client.request(
                    method,
                    _concrete(path),
                    content=b"\xa5",
                    headers={**headers, "content-type": content_type},
                )
                assert 400 <= response.status_code < 500, (method, path, response.text)
                assert response.headers["content-type"] == PROBLEM, (method, path)


async def test_a_validation_problem_lists_fields_but_never_their_values(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    secret = "hunter2-x"
    response = await client.post(
        "/api/admin/users",
        json={"email": "x@example.com", "password": secret, "role": "emperor"},
        headers=admin["headers"],
    )
    body = assert_problem(response, 422)
    assert {tuple(e["loc"]) for e in body["errors"]} == {("body", "password"), ("body", "role")}
    assert secret not in response.text
    assert "emperor" not in response.text


async def test_a_huge_invalid_body_gets_a_small_answer(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    huge = "y" * (20 * 1024 * 1024)
    for path, body in (
        ("/api/queue/enqueue", {"campaign_id": huge, "recipients": []}),
        ("/api/admin/login", {"email": "x@example.com", "password": 5, "extra": huge}),
    ):
        response = await client.post(path, json=body, headers=operator["headers"])
        assert_problem(response, 422)
        assert len(response.content) < 4096


async def test_many_invalid_fields_are_listed_up_to_a_bound(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str
) -> None:
    recipients = [{"email": [i]} for i in range(500)]
    response = await client.post(
        "/api/queue/enqueue",
        json={"campaign_id": campaign_id, "recipients": recipients},
        headers=operator["headers"],
    )
    body = assert_problem(response, 422)
    assert len(body["errors"]) == 50
    assert "500 errors" in body["detail"]


async def test_unknown_paths_and_methods_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/no/such/path"), 404)
    not_allowed = assert_problem(await client.put("/health"), 405)
    assert "Method Not Allowed" in not_allowed["title"]


async def test_authentication_and_role_errors_are_problems(
    client: httpx.AsyncClient, viewer: dict[str, Any]
) -> None:
    anonymous = await client.get("/api/campaigns")
    assert_problem(anonymous, 401)
    assert anonymous.headers["www-authenticate"] == "Bearer"
    forbidden = await client.post(
        "/api/admin/accounts", json=account_body(), headers=viewer["headers"]
    )
    assert_problem(forbidden, 403)


async def test_a_body_over_the_limit_is_a_problem(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    too_big = b"x" * (16 * 512 * 1024 + 1)
    response = await client.post(
        "/api/campaigns",
        content=too_big,
        headers={**operator["headers"], "content-type": "application/json"},
    )
    assert_problem(response, 413)


async def test_a_wrong_content_type_is_a_problem(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    response = await client.post(
        "/api/suppressions/import",
        content=b"email\nx@example.com\n",
        headers={**operator["headers"], "content-type": "application/json"},
    )
    assert_problem(response, 415)


async def test_a_cursor_out_of_the_database_range_is_refused_without_driver_text(
    client: httpx.AsyncClient, viewer: dict[str, Any]
) -> None:
    far_east = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    far_future = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-14)))
    for at in (far_east, far_future):
        cursor = encode_cursor(at, 1)
        for path in ("/api/suppressions", "/api/admin/inbound-reports"):
            response = await client.get(path, params={"cursor": cursor}, headers=viewer["headers"])
            body = assert_problem(response, 422)
            assert "cursor" in body["detail"], body
            assert "asyncpg" not in response.text
            assert "year" not in response.text


async def test_timestamps_outside_the_range_in_utc_are_invalid_everywhere(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str
) -> None:
    h = operator["headers"]
    for at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:00-14:00"):
        for path, name in (
            ("/api/suppressions", "created_after"),
            ("/api/suppressions", "created_before"),
            ("/api/admin/inbound-reports", "received_after"),
            ("/api/admin/inbound-reports", "received_before"),
        ):
            body = assert_problem(await client.get(path, params={name: at}, headers=h), 422)
            assert body["errors"][0]["loc"] == ["query", name], body
        for method, path, json in (
            ("POST", "/api/campaigns", campaign_body(start_at=at)),
            ("POST", f"/api/campaigns/{campaign_id}/start", {"start_at": at}),
            ("POST", "/api/suppressions", {"email": "x@example.com", "expires_at": at}),
        ):
            response = await client.request(method, path, json=json, headers=h)
            assert_problem(response, 422)


async def test_an_unexpected_error_is_a_problem_that_shows_nothing_of_it(
    settings: Settings,
) -> None:
    application = create_app(settings)

    @application.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get("/boom")
    body = assert_problem(response, 500)
    assert "secret" not in response.text
    assert body["detail"] == "an unexpected error occurred; it has been logged"
