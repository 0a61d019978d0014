"""Counters (migration 0018), their fold, and the analytics routes over them."""

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.api.conftest import account_body, campaign_body

Conn = asyncpg.Connection
DAY = datetime(2025, 3, 1, tzinfo=UTC)
ALL_TIME = datetime.min  # noqa: DTZ901 - how asyncpg reads '-infinity', the all-time rows


async def _setup(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn, messages: int
) -> dict[str, Any]:
    """Two accounts, two campaigns, `messages` queued messages over them."""
    ids: dict[str, Any] = {"accounts": [], "campaigns": []}
    for name in ("alpha", "beta"):
        created = await client.post(
            "/api/admin/accounts", json=account_body(name=name), headers=admin["headers"]
        )
        ids["accounts"].append(uuid.UUID(created.json()["id"]))
    for name in ("spring", "summer"):
        created = await client.post(
            "/api/campaigns", json=campaign_body(name=name), headers=admin["headers"]
        )
        ids["campaigns"].append(uuid.UUID(created.json()["id"]))
    await db.execute(
        """
        INSERT INTO messages (campaign_id, email)
        SELECT ($1::uuid[])[g % 2 + 1], 'r' || g || '@example.com' FROM generate_series(1, $2) g
        """,
        ids["campaigns"],
        messages,
    )
    return ids


FIRSTS = (
    "unique_opens", "unique_human_opens", "unique_clicks", "unique_human_clicks", "unsubscribes",
)  # fmt: skip


async def _counters(db: Conn) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM counter_buckets ORDER BY campaign_id, account_id, bucket")
    return [dict(r) for r in rows]


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows, less which hour counts a message's first open, click or unsubscribe.

    The counters put it in the hour of the first such event recorded; a recount in the hour
    of the earliest. They differ only when a message's events are recorded out of order, as
    the concurrent writers here do on purpose; the all-time figures agree.
    """
    return [
        {k: v for k, v in r.items() if k not in FIRSTS or r["bucket"] == ALL_TIME} for r in rows
    ]


async def _writer(dsn: str, ids: dict[str, Any], seed: int, messages: int) -> None:
    """Moves messages along and records their events, in small transactions, as services do.

    A message keeps its account, as a sent one does; its events come in any order.
    """
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(40):
            picked = rng.sample(range(1, messages + 1), 5)
            status = rng.choice(["assigned", "sent", "failed", "deferred", "cancelled"])
            async with conn.transaction():
                await conn.execute(
                    "UPDATE messages SET status = $2, account_id = ($3::uuid[])[id % 2 + 1],"
                    " bounce = $4 WHERE id = ANY($1::bigint[])",
                    picked,
                    status,
                    ids["accounts"],
                    rng.choice([None, None, "hard", "soft"]),
                )
                await conn.execute(
                    "INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id,"
                    " data)"
                    " SELECT $2::timestamptz + (id % 5) * interval '37 minutes', t,"
                    " campaign_id, id, account_id, jsonb_build_object('machine', id % 3 = 0,"
                    " 'bounce', 'hard')"
                    " FROM messages, unnest($3::text[]) t WHERE id = ANY($1::bigint[])",
                    picked,
                    DAY + timedelta(hours=rng.randrange(48)),
                    rng.sample(
                        ["sent", "opened", "opened", "clicked", "unsubscribed", "bounced"], 3
                    ),
                )
            if rng.random() < 0.2:
                async with conn.transaction():
                    await conn.execute("SELECT fold_counters(7)")
    finally:
        await conn.close()


async def test_counters_equal_a_recount_after_concurrent_writers_and_folds(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn, database_dsn: str
) -> None:
    ids = await _setup(client, admin, db, 200)

    await asyncio.gather(*(_writer(database_dsn, ids, seed, 200) for seed in range(4)))
    await db.execute("DELETE FROM messages WHERE id % 17 = 0 AND status = 'failed'")
    await db.execute("SELECT fold_counters(NULL)")
    kept = await _counters(db)
    await db.execute("SELECT rebuild_counters()")

    assert await db.fetchval("SELECT count(*) FROM counter_deltas") == 0
    assert _comparable(kept) == _comparable(await _counters(db))
    totals = await db.fetchrow(
        "SELECT * FROM counter_buckets WHERE campaign_id = $1 AND account_id = $1"
        " AND bucket = '-infinity'",
        uuid.UUID(int=0),
    )
    by_status = await db.fetch("SELECT status, count(*) AS n FROM messages GROUP BY status")
    assert {r["status"]: r["n"] for r in by_status} == {
        s: totals[f"messages_{s}"] for s in [r["status"] for r in by_status]
    }
    assert totals["opens"] == await db.fetchval("SELECT count(*) FROM events WHERE type = 'opened'")
    assert totals["unique_opens"] == await db.fetchval(
        "SELECT count(DISTINCT message_id) FROM events WHERE type = 'opened'"
    )


async def test_reads_count_deltas_not_yet_folded_once(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn
) -> None:
    ids = await _setup(client, admin, db, 10)
    campaign = ids["campaigns"][0]
    await db.execute(
        "UPDATE messages SET status = 'sent', account_id = $1 WHERE campaign_id = $2",
        ids["accounts"][0],
        campaign,
    )
    await db.execute(
        "INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id,"
        " data)"
        " SELECT $1, 'opened', campaign_id, id, account_id, '{}' FROM messages",
        DAY,
    )

    before = (await client.get(f"/api/campaigns/{campaign}", headers=admin["headers"])).json()
    await db.execute("SELECT fold_counters(NULL)")
    after = (await client.get(f"/api/campaigns/{campaign}", headers=admin["headers"])).json()

    assert before["messages"] == after["messages"] == {"sent": 5}
    assert before["engagement"] == after["engagement"]
    assert after["engagement"]["unique_opens"] == 5
    assert before["engagement_by_account"] == after["engagement_by_account"]


async def test_the_fold_is_idempotent_and_one_runs_at_a_time(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn, database_dsn: str
) -> None:
    await _setup(client, admin, db, 30)
    pending = await db.fetchval("SELECT count(*) FROM counter_deltas")
    other = await asyncpg.connect(database_dsn)
    try:
        async with other.transaction():
            # The other dispatcher is folding: this one folds nothing and does not wait.
            assert await other.fetchval("SELECT fold_counters(1)") == 1
            assert await db.fetchval("SELECT fold_counters(NULL)") == 0
        assert await db.fetchval("SELECT fold_counters(NULL)") == pending - 1
        folded = await _counters(db)
        assert await db.fetchval("SELECT fold_counters(NULL)") == 0
        assert await _counters(db) == folded
    finally:
        await other.close()


async def test_buckets_are_utc_hours_and_days_whatever_the_session_time_zone(
    client: httpx.AsyncClient, admin: dict[str, Any], db: Conn
) -> None:
    ids = await _setup(client, admin, db, 4)
    campaign = ids["campaigns"][1]
    await db.execute("SET TIME ZONE 'Asia/Kolkata'")  # +05:30: a date_trunc there is off
    moments = [
        DAY - timedelta(microseconds=1),
        DAY,
        DAY + timedelta(minutes=59, seconds=59),
        DAY + timedelta(hours=1),
    ]
    for moment in moments:
        await db.execute(
            "INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id,"
            " data)"
            " SELECT $1, 'sent', campaign_id, id, account_id, '{}'"
            " FROM messages WHERE campaign_id = $2 LIMIT 1",
            moment,
            campaign,
        )

    hours = await client.get(
        f"/api/analytics/campaigns/{campaign}/timeline",
        params={
            "from": "2025-03-01T01:30:00+02:00",
            "to": "2025-03-01T02:00:00Z",
            "bucket": "hour",
        },
        headers=admin["headers"],
    )
    days = await client.get(
        f"/api/analytics/campaigns/{campaign}/timeline",
        params={"from": "2025-02-28T12:00:00", "to": "2025-03-02T00:00:00Z", "bucket": "day"},
        headers=admin["headers"],
    )

    assert hours.status_code == 200, hours.text
    body = hours.json()
    assert body["from"] == "2025-02-28T23:00:00Z"
    assert [(b["start"], b["sent"]) for b in body["buckets"]] == [
        ("2025-02-28T23:00:00Z", 1),
        ("2025-03-01T00:00:00Z", 2),
        ("2025-03-01T01:00:00Z", 1),
    ]
    assert body["totals"]["sent"] == 4
    assert [(b["start"], b["sent"]) for b in days.json()["buckets"]] == [
        ("2025-02-28T00:00:00Z", 1),
        ("2025-03-01T00:00:00Z", 3),
    ]


async def test_overview_and_account_timelines_split_the_same_events(
    client: httpx.AsyncClient, admin: dict[str, Any], viewer: dict[str, Any], db: Conn
) -> None:
    ids = await _setup(client, admin, db, 6)
    for n, account in enumerate(ids["accounts"]):
        await db.execute("UPDATE messages SET account_id = $1 WHERE id % 2 = $2", account, n)
    await db.execute(
        "INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id,"
        " data)"
        " SELECT $1, t, campaign_id, id, account_id, $2::jsonb"
        " FROM messages, unnest(ARRAY['clicked', 'clicked', 'complained']) t",
        DAY + timedelta(hours=3),
        json.dumps({"machine": False}),
    )
    params = {"from": "2025-03-01T00:00:00Z", "to": "2025-03-01T06:00:00Z", "bucket": "hour"}

    overview = await client.get("/api/analytics/overview", params=params, headers=viewer["headers"])
    per_account = [
        (
            await client.get(
                f"/api/analytics/accounts/{a}", params=params, headers=viewer["headers"]
            )
        ).json()
        for a in ids["accounts"]
    ]

    assert overview.status_code == 200, overview.text
    totals = overview.json()["totals"]
    assert (totals["clicks"], totals["unique_clicks"], totals["complaints"]) == (12, 6, 6)
    assert len(overview.json()["buckets"]) == 6
    assert [p["totals"]["unique_human_clicks"] for p in per_account] == [3, 3]
    assert per_account[0]["account_id"] == str(ids["accounts"][0])


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"from": "2025-03-02T00:00:00Z", "to": "2025-03-01T00:00:00Z"}, 422),
        ({"from": "2025-03-01T00:00:00Z", "to": "2025-03-01T00:00:00Z"}, 422),
        ({"from": "2025-01-01T00:00:00Z", "to": "2025-03-01T00:00:00Z", "bucket": "hour"}, 422),
        ({"from": "2024-01-01T00:00:00Z", "to": "2025-03-01T00:00:00Z", "bucket": "day"}, 422),
        ({"bucket": "week"}, 422),
        ({"from": "yesterday"}, 422),
        ({"bucket": "hour"}, 200),
        ({}, 200),
    ],
)
async def test_periods_are_checked(
    client: httpx.AsyncClient, viewer: dict[str, Any], params: dict[str, str], status: int
) -> None:
    response = await client.get("/api/analytics/overview", params=params, headers=viewer["headers"])

    assert response.status_code == status, response.text
    if status == 422:
        assert response.headers["content-type"] == "application/problem+json"


async def test_analytics_need_a_login_and_known_ids(
    client: httpx.AsyncClient, viewer: dict[str, Any]
) -> None:
    unknown = uuid.uuid4()
    for path in (
        "/api/analytics/overview",
        f"/api/analytics/campaigns/{unknown}/timeline",
        f"/api/analytics/accounts/{unknown}",
    ):
        assert (await client.get(path)).status_code == 401
    for path in (
        f"/api/analytics/campaigns/{unknown}/timeline",
        f"/api/analytics/accounts/{unknown}",
    ):
        assert (await client.get(path, headers=viewer["headers"])).status_code == 404
