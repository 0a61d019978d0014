"""Request rate limits per API key and per user, counted in a real Redis, and their fields."""

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from mailfleet_api.main import create_app
from mailfleet_api.settings import RateLimitSettings, Settings
from pydantic import SecretStr

from tests.stack import Stack, free_port

from .conftest import UserFactory
from .test_problems import assert_problem

REDIS_URL = os.environ.get("MAILFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FIELDS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy")

AppFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def limited_app(settings: Settings, db: Any) -> AppFactory:
    """Builds the app with these rate limits, counted in Redis under a prefix of its own."""

    @asynccontextmanager
    async def build(
        storage_url: str = REDIS_URL, **limits: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        throttle = settings.throttle.model_copy(
            update={"storage_url": SecretStr(storage_url), "key_prefix": f"test-{uuid.uuid4().hex}"}
        )
        rate_limit = RateLimitSettings(**limits)
        application = create_app(
            settings.model_copy(update={"throttle": throttle, "rate_limit": rate_limit})
        )
        async with LifespanManager(application) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                yield client

    return build


async def _api_key(client: httpx.AsyncClient, admin: dict[str, Any], **body: Any) -> str:
    created = await client.post(
        "/api/admin/api-keys", json={"name": "k", **body}, headers=admin["headers"]
    )
    assert created.status_code == 201, created.text
    key: str = created.json()["key"]
    return key


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_every_authenticated_answer_carries_the_fields_counting_down(
    limited_app: AppFactory, make_user: UserFactory
) -> None:
    viewer = await make_user("viewer")
    async with limited_app(default="5/hour") as client:
        answers = [
            await client.get("/api/queue/status", headers=viewer["headers"]),
            await client.get(f"/api/campaigns/{uuid.uuid4()}", headers=viewer["headers"]),
            await client.post("/api/admin/api-keys", json={"name": "k"}, headers=viewer["headers"]),
        ]
        assert [a.status_code for a in answers] == [200, 404, 403]
        assert [a.headers["ratelimit-remaining"] for a in answers] == ["4", "3", "2"]
        for answer in answers:
            assert answer.headers["ratelimit-limit"] == "5"
            assert 3590 <= int(answer.headers["ratelimit-reset"]) <= 3600
            assert answer.headers["ratelimit-policy"] == '5;w=3600;name="default"'
        # Anonymous calls are not counted (the login throttle guards login).
        for anonymous in (
            await client.get("/health"),
            await client.get("/api/queue/status"),
            await client.post("/api/admin/login", json={"email": "a@b.example", "password": "x"}),
        ):
            assert not set(FIELDS) & set(anonymous.headers), anonymous.headers


async def test_a_caller_past_its_limit_gets_429_with_retry_after_and_others_go_on(
    limited_app: AppFactory, make_user: UserFactory
) -> None:
    first, other = await make_user("viewer"), await make_user("viewer")
    async with limited_app(default="3/hour") as client:
        for _ in range(3):
            assert (await client.get("/api/queue/status", headers=first["headers"])).is_success
        refused = await client.get("/api/queue/status", headers=first["headers"])
        assert_problem(refused, 429)
        assert 3590 <= int(refused.headers["retry-after"]) <= 3600
        assert refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-reset"] == refused.headers["retry-after"]
        assert (await client.get("/api/queue/status", headers=other["headers"])).is_success


async def test_each_api_key_has_its_own_budget_and_tokens_count_per_user(
    limited_app: AppFactory, make_user: UserFactory, signer: Any
) -> None:
    admin = await make_user("admin")
    async with limited_app(default="4/hour") as client:
        # The admin's token has spent 2 of its 4 on making two keys.
        keys = [await _api_key(client, admin), await _api_key(client, admin)]
        for key in keys:
            for _ in range(4):
                assert (await client.get("/api/queue/status", headers=_bearer(key))).is_success
            assert_problem(await client.get("/api/queue/status", headers=_bearer(key)), 429)
        # A second token of the same user shares the user's budget.
        token, _ = signer.issue(admin["id"])
        for remaining in ("1", "0"):
            answer = await client.get("/api/queue/status", headers=_bearer(token))
            assert answer.headers["ratelimit-remaining"] == remaining
        assert_problem(await client.get("/api/queue/status", headers=_bearer(token)), 429)


async def test_a_key_created_with_a_rate_of_its_own_is_counted_against_it(
    limited_app: AppFactory, make_user: UserFactory
) -> None:
    admin = await make_user("admin")
    async with limited_app(default="3/hour") as client:
        created = await client.post(
            "/api/admin/api-keys",
            json={"name": "bulk", "rate_limit": "5/hour"},
            headers=admin["headers"],
        )
        assert created.status_code == 201, created.text
        assert created.json()["rate_limit"] == "5/hour"
        own = _bearer(created.json()["key"])
        default = _bearer(await _api_key(client, admin))
        listed = await client.get("/api/admin/api-keys", headers=admin["headers"])
        assert [k["rate_limit"] for k in listed.json()["items"]] == ["5/hour", None]

        # Above the default of 3: the key's own rate replaces it, in the fields too.
        for remaining in ("4", "3", "2", "1", "0"):
            answer = await client.get("/api/queue/status", headers=own)
            assert answer.is_success, answer.text
            assert answer.headers["ratelimit-limit"] == "5"
            assert answer.headers["ratelimit-remaining"] == remaining
            assert answer.headers["ratelimit-policy"] == '5;w=3600;name="default"'
        assert_problem(await client.get("/api/queue/status", headers=own), 429)
        for _ in range(3):
            assert (await client.get("/api/queue/status", headers=default)).is_success
        assert_problem(await client.get("/api/queue/status", headers=default), 429)


async def test_a_key_rate_that_is_not_one_rate_of_a_day_or_less_is_refused(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    refused = [
        "often", "", "0/minute", "-1/minute", "10 per minute", "10/minute;100/hour",
        "1/0 minutes", "5/fortnight", "2/2 days", "7/week", "1000000000/second", 5,
    ]  # fmt: skip
    for rate in refused:
        answer = await client.post(
            "/api/admin/api-keys", json={"name": "k", "rate_limit": rate}, headers=admin["headers"]
        )
        assert_problem(answer, 422)
    for rate in ("50/second", "600/minute", "100/15 minutes", "10000/day", "86400/86400 seconds"):
        answer = await client.post(
            "/api/admin/api-keys", json={"name": "k", "rate_limit": rate}, headers=admin["headers"]
        )
        assert answer.status_code == 201, (rate, answer.text)


async def test_heavy_routes_are_counted_against_the_heavy_limit_too(
    limited_app: AppFactory, make_user: UserFactory, campaign_id: str, operator: dict[str, Any]
) -> None:
    async with limited_app(default="100/hour", heavy="2/hour") as client:
        body = {"campaign_id": campaign_id, "recipients": [{"email": "a@example.org"}]}
        for remaining in ("1", "0"):
            answer = await client.post("/api/queue/enqueue", json=body, headers=operator["headers"])
            assert answer.is_success, answer.text
            # The tightest quota is shown; both policies are listed.
            assert answer.headers["ratelimit-limit"] == "2"
            assert answer.headers["ratelimit-remaining"] == remaining
            assert answer.headers["ratelimit-policy"] == (
                '100;w=3600;name="default", 2;w=3600;name="heavy"'
            )
        assert_problem(
            await client.post("/api/queue/enqueue", json=body, headers=operator["headers"]), 429
        )
        light = await client.get("/api/queue/status", headers=operator["headers"])
        assert light.is_success
        assert light.headers["ratelimit-remaining"] == "96"


async def test_with_redis_unreachable_requests_go_on_uncounted_and_are_measured(
    limited_app: AppFactory, make_user: UserFactory
) -> None:
    viewer = await make_user("viewer")
    async with limited_app(storage_url=f"redis://127.0.0.1:{free_port()}/0", default="1/hour") as c:
        started = time.perf_counter()
        answers = [await c.get("/api/queue/status", headers=viewer["headers"]) for _ in range(5)]
        elapsed = time.perf_counter() - started
        assert [a.status_code for a in answers] == [200] * 5
        assert not set(FIELDS) & set(answers[0].headers)
        assert elapsed < 2, elapsed
        metrics = (await c.get("/metrics")).text
    assert "mailfleet_api_rate_limit_storage_errors_total 5.0" in metrics


async def test_two_api_processes_share_one_limit(
    database_dsn: str, rabbit_url: str, crypto_keys: str
) -> None:
    limits = {
        "MAILFLEET_THROTTLE__STORAGE_URL": REDIS_URL,
        "MAILFLEET_THROTTLE__KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        "MAILFLEET_RATE_LIMIT__DEFAULT": "10/hour",
        "MAILFLEET_LOG_LEVEL": "WARNING",
    }
    async with Stack(
        postgres_dsn=database_dsn, rabbit_url=rabbit_url, crypto_keys=crypto_keys, env=limits
    ) as stack:
        first, second = await stack.start_api(), await stack.start_api()
        async with await stack.admin_client() as admin:
            created = await admin.post("/api/admin/api-keys", json={"name": "shared"})
            assert created.status_code == 201, created.text
            headers = _bearer(created.json()["key"])

        answers = []
        async with httpx.AsyncClient(headers=headers, timeout=10) as client:
            for api in [first, second] * 8:
                answers.append(await client.get(f"{api.url}/api/queue/status"))
    # Alternating between the processes: the shared budget of 10 is spent, then both refuse.
    assert [a.status_code for a in answers] == [200] * 10 + [429] * 6
    assert [a.headers["ratelimit-remaining"] for a in answers[:10]] == [
        str(n) for n in range(9, -1, -1)
    ]
