"""Engagement counters: opens, clicks and unsubscribes of a campaign, by account, in stats."""

import json
import uuid
from typing import Any

import httpx
import pytest

from .conftest import Conn, account_body, campaign_body, feedback

# Two accounts send campaign "spring": alpha sends m1, m2, m3 (and fails m4), beta sends m5
# and m6 (m7 is still queued). Account alpha also sends m8 of a later campaign, "summer".
MESSAGES = {
    "m1": ("spring", "alpha", "sent"), "m2": ("spring", "alpha", "sent"),
    "m3": ("spring", "alpha", "sent"), "m4": ("spring", "alpha", "failed"),
    "m5": ("spring", "beta", "sent"), "m6": ("spring", "beta", "sent"),
    "m7": ("spring", None, "queued"), "m8": ("summer", "alpha", "sent"),
}  # fmt: skip

# (type, message, data): machine-flagged hits count in the totals, not in the human figures.
HUMAN: dict[str, Any] = {"machine": False, "ip": "192.0.2.1"}
MACHINE: dict[str, Any] = {"machine": True, "machine_reason": "apple-mpp"}
EVENTS = [
    ("opened", "m1", HUMAN), ("opened", "m1", HUMAN), ("opened", "m1", MACHINE),
    ("opened", "m2", MACHINE),
    ("opened", "m5", {}),  # recorded without the flag: human
    ("clicked", "m1", {**HUMAN, "url": "https://example.com/a"}),
    ("clicked", "m1", {**MACHINE, "url": "https://example.com/a"}),
    ("clicked", "m5", {**MACHINE, "url": "https://example.com/b"}),
    ("unsubscribed", "m2", HUMAN), ("unsubscribed", "m2", HUMAN),
    ("unsubscribed", "m6", HUMAN),
    ("opened", "m8", HUMAN),
    # Not engagement: the recorder's delivery events are left out of every counter.
    ("sent", "m1", {}), ("deferred", "m5", {}),
]  # fmt: skip

COUNTERS = (
    "sent", "opens", "unique_opens", "human_opens", "unique_human_opens",
    "clicks", "unique_clicks", "human_clicks", "unique_human_clicks", "unsubscribes",
)  # fmt: skip
RATES = ("open_rate", "human_open_rate", "click_rate", "human_click_rate", "unsubscribe_rate")


def engagement(counters: tuple[int, ...], rates: tuple[float, ...]) -> dict[str, Any]:
    return dict(zip(COUNTERS, counters, strict=True)) | dict(zip(RATES, rates, strict=True))


SPRING = engagement((5, 5, 3, 3, 2, 3, 2, 1, 1, 2), (0.6, 0.4, 0.4, 0.2, 0.4))
SPRING_ALPHA = engagement((3, 4, 2, 2, 1, 2, 1, 1, 1, 1), (0.6667, 0.3333, 0.3333, 0.3333, 0.3333))
SPRING_BETA = engagement((2, 1, 1, 1, 1, 1, 1, 0, 0, 1), (0.5, 0.5, 0.5, 0.0, 0.5))
SUMMER = engagement((1, 1, 1, 1, 1, 0, 0, 0, 0, 0), (1.0, 1.0, 0.0, 0.0, 0.0))
ALPHA = engagement((4, 5, 3, 3, 2, 2, 1, 1, 1, 1), (0.75, 0.5, 0.25, 0.25, 0.25))
NOTHING = engagement((0,) * 10, (0.0,) * 5)


@pytest.fixture
async def sent(
    client: httpx.AsyncClient, db: Conn, admin: dict[str, Any], operator: dict[str, Any]
) -> dict[str, str]:
    """The accounts, campaigns, messages and events above; returns the ids by name."""
    ids: dict[str, str] = {}
    for name in ("alpha", "beta"):
        created = await client.post(
            "/api/admin/accounts", json=account_body(name=name), headers=admin["headers"]
        )
        ids[name] = created.json()["id"]
    for name in ("spring", "summer", "draft"):
        created = await client.post(
            "/api/campaigns", json=campaign_body(name=name), headers=operator["headers"]
        )
        ids[name] = created.json()["id"]
    for key, (campaign, account, status) in MESSAGES.items():
        message_id = await db.fetchval(
            "INSERT INTO messages (campaign_id, email, status, account_id)"
            " VALUES ($1, $2, $3, $4) RETURNING id",
            uuid.UUID(ids[campaign]),
            f"{key}@example.com",
            status,
            None if account is None else uuid.UUID(ids[account]),
        )
        ids[key] = str(message_id)
    await db.executemany(
        """
        INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data,
                            event_key)
        SELECT now(), $1, campaign_id, id, account_id, $3::jsonb, $4 FROM messages WHERE id = $2
        """,
        [
            (kind, int(ids[message]), json.dumps(data), f"hit-{n}")
            for n, (kind, message, data) in enumerate(EVENTS)
        ],
    )
    return ids


async def test_campaign_detail_counts_engagement_overall_and_by_account(
    client: httpx.AsyncClient, viewer: dict[str, Any], sent: dict[str, str]
) -> None:
    response = await client.get(f"/api/campaigns/{sent['spring']}", headers=viewer["headers"])

    assert response.status_code == 200, response.text
    campaign = response.json()
    assert campaign["engagement"] == SPRING
    assert campaign["engagement_by_account"] == [
        {"account_id": sent["alpha"], "name": "alpha", "engagement": SPRING_ALPHA},
        {"account_id": sent["beta"], "name": "beta", "engagement": SPRING_BETA},
    ]
    assert campaign["messages"] == {"sent": 5, "failed": 1, "queued": 1}


async def test_a_campaign_that_sent_nothing_has_zero_counts_and_rates(
    client: httpx.AsyncClient, viewer: dict[str, Any], sent: dict[str, str]
) -> None:
    response = await client.get(f"/api/campaigns/{sent['draft']}", headers=viewer["headers"])

    assert response.status_code == 200, response.text
    assert response.json()["engagement"] == NOTHING
    assert response.json()["engagement_by_account"] == []


async def test_stats_give_engagement_by_recent_campaign(
    client: httpx.AsyncClient, viewer: dict[str, Any], sent: dict[str, str]
) -> None:
    response = await client.get("/api/admin/stats", headers=viewer["headers"])

    assert response.status_code == 200, response.text
    stats = response.json()
    # Newest first; the draft campaign sent nothing and is left out.
    assert stats["engagement_by_campaign"] == [
        {"campaign_id": sent["summer"], "name": "summer", "status": "draft", "engagement": SUMMER},
        {"campaign_id": sent["spring"], "name": "spring", "status": "draft", "engagement": SPRING},
    ]


async def test_stats_give_engagement_of_as_many_campaigns_as_asked(
    client: httpx.AsyncClient, viewer: dict[str, Any], sent: dict[str, str]
) -> None:
    h = viewer["headers"]
    one = await client.get("/api/admin/stats", params={"campaign_limit": 1}, headers=h)
    none = await client.get("/api/admin/stats", params={"campaign_limit": 0}, headers=h)
    too_many = await client.get("/api/admin/stats", params={"campaign_limit": 501}, headers=h)

    assert one.json()["engagement_by_campaign"] == [
        {"campaign_id": sent["summer"], "name": "summer", "status": "draft", "engagement": SUMMER}
    ]
    assert none.json()["engagement_by_campaign"] == []
    assert too_many.status_code == 422
    assert too_many.json()["detail"]


async def test_engagement_is_refused_without_credentials(
    client: httpx.AsyncClient, sent: dict[str, str]
) -> None:
    for path in (f"/api/campaigns/{sent['spring']}", "/api/admin/stats"):
        response = await client.get(path)
        assert response.status_code == 401, path


async def test_campaign_detail_counts_bounces_complaints_and_replies_over_sent(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn, sent: dict[str, str]
) -> None:
    # message: (bounce, complained, replied)
    returns = {
        "m1": ("hard", False, False),
        "m5": ("hard", False, False),
        "m2": ("soft", False, False),
        "m3": (None, True, False),
        "m6": (None, False, True),
        "m8": (None, True, True),
    }
    for message, (bounce, complained, replied) in returns.items():
        await db.execute(
            """
            UPDATE messages
            SET bounce = $2, bounced_at = CASE WHEN $2::text IS NOT NULL THEN now() END,
                complained_at = CASE WHEN $3 THEN now() END,
                replied_at = CASE WHEN $4 THEN now() END
            WHERE id = $1
            """,
            int(sent[message]),
            bounce,
            complained,
            replied,
        )

    spring = (
        await client.get(f"/api/campaigns/{sent['spring']}", headers=viewer["headers"])
    ).json()
    summer = (
        await client.get(f"/api/campaigns/{sent['summer']}", headers=viewer["headers"])
    ).json()
    draft = (await client.get(f"/api/campaigns/{sent['draft']}", headers=viewer["headers"])).json()

    assert spring["feedback"] == feedback(5, 2, 1, 1, 1, 0.4, 0.2, 0.2, 0.2)
    assert summer["feedback"] == feedback(1, 0, 0, 1, 1, 0.0, 0.0, 1.0, 1.0)
    assert draft["feedback"] == feedback(0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)
