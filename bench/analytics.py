"""Read latency of the analytics, campaign and stats routes over a large dataset.

    uv run python -m bench.analytics [--messages 10000000] [--requests 200] [--rebuild]

Uses `bench.dataset` (N messages, 3N events over 100 campaigns and 1,000 accounts; built
once and kept), then calls each route `--requests` times, one after another, through the API
app in this process (httpx's ASGITransport: the whole FastAPI stack, its pool and the real
PostgreSQL, no network), cycling over campaigns and accounts. Prints one JSON line: the
dataset's size and build time, and p50, p99 and max in milliseconds per route.
"""

import argparse
import asyncio
import itertools
import json
import statistics
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
from asgi_lifespan import LifespanManager
from mailfleet_api.auth import TokenSigner
from mailfleet_api.main import create_app
from mailfleet_api.settings import AuthSettings, Settings
from mailfleet_common.crypto import generate_key
from mailfleet_common.settings import CryptoSettings, PostgresSettings, RabbitSettings

from bench import dataset
from bench.scratch import Scratch

JWT_SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"  # noqa: S105 - a throwaway app


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def _routes(conn: "asyncpg.Connection[asyncpg.Record]") -> dict[str, Any]:
    """Each route's name and an endless supply of its paths with their parameters."""
    campaigns = [
        (r["id"], r["created_at"])
        for r in await conn.fetch("SELECT id, created_at FROM campaigns ORDER BY created_at")
    ]
    accounts = [r["id"] for r in await conn.fetch("SELECT id FROM accounts ORDER BY name")]
    now = await conn.fetchval("SELECT now()")

    def window(at: datetime, days: int) -> dict[str, str]:
        return {"from": at.isoformat(), "to": (at + timedelta(days=days)).isoformat()}

    return {
        "campaign_detail": ((f"/api/campaigns/{c}", {}) for c, _ in itertools.cycle(campaigns)),
        "campaign_list": itertools.repeat(("/api/campaigns", {"limit": 50})),
        "admin_stats": itertools.repeat(("/api/admin/stats", {})),
        "overview_day_366d": itertools.repeat(
            (
                "/api/analytics/overview",
                {"from": (now - timedelta(days=365)).isoformat(), "bucket": "day"},
            )
        ),
        "overview_hour_30d": itertools.repeat(
            (
                "/api/analytics/overview",
                {"from": (now - timedelta(days=30)).isoformat(), "bucket": "hour"},
            )
        ),
        "campaign_timeline_hour_3d": (
            (f"/api/analytics/campaigns/{c}/timeline", {**window(at, 3), "bucket": "hour"})
            for c, at in itertools.cycle(campaigns)
        ),
        "campaign_timeline_day_90d": (
            (f"/api/analytics/campaigns/{c}/timeline", {**window(at, 90), "bucket": "day"})
            for c, at in itertools.cycle(campaigns)
        ),
        "account_day_90d": (
            (f"/api/analytics/accounts/{a}", {"from": (now - timedelta(days=90)).isoformat()})
            for a in itertools.cycle(accounts)
        ),
        "account_hour_30d": (
            (
                f"/api/analytics/accounts/{a}",
                {"from": (now - timedelta(days=30)).isoformat(), "bucket": "hour"},
            )
            for a in itertools.cycle(accounts)
        ),
    }


async def run(messages: int, requests: int, rebuild: bool) -> dict[str, Any]:
    size = await dataset.ensure(messages, rebuild)
    conn = await asyncpg.connect(dataset.DSN)
    try:
        admin_id = await conn.fetchval("SELECT id FROM users WHERE role = 'admin' LIMIT 1")
        routes = await _routes(conn)
    finally:
        await conn.close()
    figures: dict[str, Any] = {}
    # Only for its RabbitMQ vhost: the app's lifespan connects to a broker.
    scratch = Scratch()
    async with scratch:
        settings = Settings(
            postgres=PostgresSettings(dsn=dataset.DSN, pool_min=1, pool_max=4),
            rabbit=RabbitSettings(url=scratch.rabbit_url),
            crypto=CryptoSettings(keys=generate_key()),
            auth=AuthSettings(jwt_secret=JWT_SECRET),
        )
        token, _ = TokenSigner.from_settings(settings.auth).issue(admin_id)
        headers = {"Authorization": f"Bearer {token}"}
        app = create_app(settings)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                for name, paths in routes.items():
                    samples = []
                    for n, (path, params) in enumerate(itertools.islice(paths, requests + 5)):
                        started = time.perf_counter()
                        response = await client.get(path, params=params, headers=headers)
                        elapsed = time.perf_counter() - started
                        if response.status_code != 200:
                            raise RuntimeError(f"{path} {params}: {response.text}")
                        if n >= 5:  # the first few warm the pool and the caches
                            samples.append(elapsed)
                    figures[name] = _percentiles(samples)
    return {
        "messages": size["messages"],
        "events": size["events"],
        "build_s": size["build_s"],
        "built_s": round(size["built_s"], 1),
        "api": "in process (httpx ASGITransport)",
        "requests_per_route": requests,
        "routes": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.requests, args.rebuild))))


if __name__ == "__main__":
    main()
