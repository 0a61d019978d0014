"""The password policy of new users: long enough, not blank, not guessable."""

from typing import Any

import httpx
import pytest

from .test_problems import assert_problem

WEAK = {
    "twelve spaces": " " * 12,
    "a common password": "password1234",
    "a keyboard walk": "qwertyuiop12",
    "a repeated character": "aaaaaaaaaaaaaaaa",
    "the user's own address": "alice.smith@example.com",
    "too short": "Xk9#mq2!",
}


@pytest.mark.parametrize("password", WEAK.values(), ids=WEAK.keys())
async def test_a_weak_password_is_refused_with_a_reason_and_not_echoed(
    client: httpx.AsyncClient, admin: dict[str, Any], password: str
) -> None:
    response = await client.post(
        "/api/admin/users",
        json={"email": "alice.smith@example.com", "password": password, "role": "viewer"},
        headers=admin["headers"],
    )
    body = assert_problem(response, 422)
    assert "password" in body["detail"]
    if password.strip():
        assert password not in response.text


async def test_a_strong_password_is_accepted(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    response = await client.post(
        "/api/admin/users",
        json={"email": "bob@example.com", "password": "plum tractor violet 42", "role": "viewer"},
        headers=admin["headers"],
    )
    assert response.status_code == 201, response.text
