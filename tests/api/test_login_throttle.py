"""Login throttling (per account and per client, in Redis) and argon2 kept off the loop."""

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from mailfleet_api.main import create_app
from mailfleet_api.settings import Settings, ThrottleSettings

from .conftest import PASSWORD, UserFactory
from .test_problems import assert_problem

REDIS_URL = os.environ.get("MAILFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def throttled(settings: Settings, db: Any) -> AsyncIterator[FastAPI]:
    """The app counting failures in Redis, under a prefix of its own: 3 per account, 5 per
    client, a minute each."""
    throttle = ThrottleSettings(
        storage_url=REDIS_URL,
        key_prefix=f"mailfleet-test-{uuid.uuid4().hex}",
        login_per_account="3/minute",
        login_per_client="5/minute",
    )
    application = create_app(settings.model_copy(update={"throttle": throttle}))
    async with LifespanManager(application) as manager:
        application.state.asgi = manager.app
        yield application


def _client(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app.state.asgi, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://api")


async def _login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/admin/login", json={"email": email, "password": password})


async def _fail(client: httpx.AsyncClient, emails: list[str]) -> None:
    for email in emails:
        assert (await _login(client, email, "wrong password")).status_code == 401


async def test_failed_logins_for_an_account_are_throttled_with_retry_after(
    throttled: FastAPI, make_user: UserFactory
) -> None:
    user = await make_user("viewer")
    async with _client(throttled, "192.0.2.1") as first, _client(throttled, "192.0.2.2") as other:
        await _fail(first, [user["email"]] * 3)
        # The account is throttled from anywhere, even with the right password.
        for client in (first, other):
            refused = await _login(client, user["email"], PASSWORD)
            assert_problem(refused, 429)
            assert 1 <= int(refused.headers["retry-after"]) <= 60


async def test_a_client_failing_on_many_accounts_is_throttled_alone(
    throttled: FastAPI, make_user: UserFactory
) -> None:
    user = await make_user("viewer")
    async with _client(throttled, "192.0.2.3") as guesser, _client(throttled, "192.0.2.4") as ok:
        await _fail(guesser, [f"u{n}@example.com" for n in range(5)])
        assert_problem(await _login(guesser, user["email"], PASSWORD), 429)
        assert (await _login(ok, user["email"], PASSWORD)).status_code == 200


async def test_a_right_password_forgets_the_account_failures(
    throttled: FastAPI, make_user: UserFactory
) -> None:
    user = await make_user("viewer")
    async with _client(throttled, "192.0.2.5") as a, _client(throttled, "192.0.2.6") as b:
        for client in (a, b):
            await _fail(client, [user["email"]] * 2)
            assert (await _login(client, user["email"], PASSWORD)).status_code == 200


async def test_without_redis_settings_failures_are_counted_in_memory(
    settings: Settings, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    assert not settings.throttle.storage_url.get_secret_value()
    user = await make_user("viewer")
    await _fail(client, [user["email"]] * 10)
    assert_problem(await _login(client, user["email"], PASSWORD), 429)


async def test_logins_beyond_the_waiting_bound_are_refused_at_once(
    settings: Settings, make_user: UserFactory
) -> None:
    auth = settings.auth.model_copy(update={"verify_workers": 1, "verify_queue": 2})
    application = create_app(settings.model_copy(update={"auth": auth}))
    user = await make_user("viewer")
    async with LifespanManager(application) as manager:
        application.state.asgi = manager.app
        async with _client(application, "192.0.2.7") as client:
            answers = await asyncio.gather(
                *(_login(client, user["email"], PASSWORD) for _ in range(12))
            )
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) >= 3, codes
    refused = [a for a in answers if a.status_code == 429]
    assert refused, codes
    assert {a.headers["retry-after"] for a in refused} == {"1"}
    assert_problem(refused[0], 429)


async def test_health_answers_quickly_during_concurrent_logins(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    users = [await make_user("viewer") for _ in range(10)]
    latencies: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            assert (await client.get("/health")).status_code == 200
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)

    async def logins(user: dict[str, Any]) -> None:
        for _ in range(2):
            response = await _login(client, user["email"], PASSWORD)
            assert response.status_code == 200

    prober = asyncio.create_task(probe())
    started = time.perf_counter()
    await asyncio.gather(*(logins(u) for u in users))
    elapsed = time.perf_counter() - started
    done.set()
    await prober
    # 20 argon2 checks take seconds of CPU: the loop answers meanwhile.
    assert elapsed > 0.5
    assert len(latencies) > 10
    assert statistics.median(latencies) < 0.1, sorted(latencies)
    assert max(latencies) < 0.5, sorted(latencies)
