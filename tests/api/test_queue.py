"""Queue status and clearing, statistics, and the anonymous ops endpoints."""

import os
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Conn, account_body


async def _seed(db: Conn, campaign_id: str, account_id: str, statuses: list[str]) -> None:
    await db.executemany(
        "INSERT INTO messages (campaign_id, email, status, account_id) VALUES ($1, $2, $3, $4)",
        [
            (uuid.UUID(campaign_id), f"m{i}@example.com", status,
             None if status == "queued" else uuid.UUID(account_id))
            for i, status in enumerate(statuses)
        ],
    )  # fmt: skip


async def test_queue_status_counts_messages_by_status_and_account(
    client: httpx.AsyncClient, admin: dict[str, Any], viewer: dict[str, Any], campaign_id: str,
    db: Conn,
) -> None:  # fmt: skip
    account = (
        await client.post(
            "/api/admin/accounts", json=account_body(name="acc"), headers=admin["headers"]
        )
    ).json()
    await _seed(db, campaign_id, account["id"], ["queued", "queued", "assigned", "sent", "failed"])
    status = (await client.get("/api/queue/status", headers=viewer["headers"])).json()
    assert status["by_status"] == {"queued": 2, "assigned": 1, "sent": 1, "failed": 1}
    assert status["by_account"] == [
        {
            "account_id": account["id"],
            "name": "acc",
            "by_status": {"assigned": 1, "sent": 1, "failed": 1},
        }
    ]
    # Read from the counters: the same once the dispatcher folded them.
    await db.execute("SELECT fold_counters(NULL)")
    assert (await client.get("/api/queue/status", headers=viewer["headers"])).json() == status


async def test_clear_removes_failed_messages_of_one_campaign_or_all(
    client: httpx.AsyncClient, admin: dict[str, Any], operator: dict[str, Any], campaign_id: str,
    db: Conn,
) -> None:  # fmt: skip
    h = operator["headers"]
    other = (
        await client.post(
            "/api/campaigns", json={"name": "o", "subject": "s", "text_body": "t"}, headers=h
        )
    ).json()["id"]
    account_id = (
        await client.post("/api/admin/accounts", json=account_body(), headers=admin["headers"])
    ).json()["id"]
    await _seed(db, campaign_id, account_id, ["failed", "failed", "sent"])
    await _seed(db, other, account_id, ["failed", "queued"])
    one = await client.post("/api/queue/clear", json={"campaign_id": campaign_id}, headers=h)
    assert one.json() == {"removed": 2}
    rest = await client.post("/api/queue/clear", headers=h)
    assert rest.json() == {"removed": 1}
    remaining = await db.fetch("SELECT status FROM messages ORDER BY status")
    assert [r["status"] for r in remaining] == ["queued", "sent"]
    assert (
        await client.post("/api/queue/clear", json={"campaign_id": "x"}, headers=h)
    ).status_code == 422


async def test_stats_show_totals_campaigns_and_usage_against_limits(
    client: httpx.AsyncClient, admin: dict[str, Any], campaign_id: str, db: Conn
) -> None:
    account = (
        await client.post(
            "/api/admin/accounts", json=account_body(daily_limit=300), headers=admin["headers"]
        )
    ).json()
    await _seed(db, campaign_id, account["id"], ["sent", "sent", "queued"])
    await db.execute(
        "INSERT INTO account_daily_usage (account_id, day, reserved, sent) VALUES ($1, $2, 3, 2)",
        uuid.UUID(account["id"]),
        datetime.now(UTC).date(),
    )
    stats = (await client.get("/api/admin/stats", headers=admin["headers"])).json()
    assert stats["messages_by_status"] == {"sent": 2, "queued": 1}
    assert stats["campaigns_by_status"] == {"draft": 1}
    today = stats["today"]
    assert today["day"] == datetime.now(UTC).date().isoformat()
    assert today["accounts_by_status"] == {"active": 1}
    assert (today["reserved"], today["sent"], today["failed"]) == (3, 2, 0)
    assert today["effective_limit"] == 300


async def test_health_ready_and_metrics_answer_anonymously(
    client: httpx.AsyncClient, admin: dict[str, Any]
) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": True, "broker": True}
    await client.get(f"/api/campaigns/{uuid.uuid4()}", headers=admin["headers"])
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert 'route="/api/campaigns/{campaign_id}"' in metrics.text
    assert "mailfleet_api_request_seconds_bucket" in metrics.text


async def test_metrics_show_the_api_process_like_the_other_services(
    client: httpx.AsyncClient,
) -> None:
    text = (await client.get("/metrics")).text
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    # This process: the test runs the app in process, so the figures are the test's own.
    assert values["process_resident_memory_bytes"] > 10_000_000
    assert values["process_open_fds"] > 0
    assert abs(values["process_start_time_seconds"] - started_at()) < 5
    assert "python_info" in values
    assert "python_gc_collections_total" in values


async def test_openapi_documents_every_route_with_a_summary(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    operations = [op for path in schema["paths"].values() for op in path.values()]
    assert len(operations) >= 24
    assert all(op.get("description") for op in operations)
    enqueue = schema["paths"]["/api/queue/enqueue"]["post"]
    assert (
        "recipients"
        in enqueue["requestBody"]["content"]["application/json"]["schema"]["properties"]
    )
    assert (await client.get("/docs")).status_code == 200


def started_at() -> float:
    """When this process started, from /proc (what ProcessCollector reads too)."""
    with open("/proc/self/stat") as stat:
        start_ticks = float(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as proc_stat:
        boot = next(float(line.split()[1]) for line in proc_stat if line.startswith("btime"))
    return boot + start_ticks / os.sysconf("SC_CLK_TCK")
