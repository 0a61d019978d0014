"""Messages and events: filters, cursors, one message's detail, IP privacy, the live feed."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from mailfleet_api import feed
from mailfleet_api.privacy import IpShown
from mailfleet_api.settings import Settings
from mailfleet_common.messages import SendAttempt, TrackingHit
from mailfleet_dispatcher import queries as recorder

from .conftest import Conn, account_body, campaign_body

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


async def _setup(client: httpx.AsyncClient, admin: dict[str, Any]) -> dict[str, Any]:
    ids: dict[str, Any] = {}
    for name in ("alpha", "beta"):
        created = await client.post(
            "/api/admin/accounts", json=account_body(name=name), headers=admin["headers"]
        )
        ids[name] = uuid.UUID(created.json()["id"])
    for name in ("spring", "summer"):
        created = await client.post(
            "/api/campaigns", json=campaign_body(name=name), headers=admin["headers"]
        )
        ids[name] = uuid.UUID(created.json()["id"])
    return ids


@pytest.fixture
async def fleet(client: httpx.AsyncClient, db: Conn, admin: dict[str, Any]) -> dict[str, Any]:
    """120 messages: spring (alpha) and summer (beta), one a minute, in every status."""
    ids = await _setup(client, admin)
    statuses = ["sent", "sent", "failed", "queued", "deferred", "sent"]
    await db.execute(
        """
        INSERT INTO messages (campaign_id, email, status, account_id, created_at, sent_at)
        SELECT CASE WHEN g % 2 = 0 THEN $1::uuid ELSE $2::uuid END,
               'user' || g || '@example.com', ($3::text[])[1 + g % 6],
               CASE WHEN ($3::text[])[1 + g % 6] = 'queued' THEN NULL
                    WHEN g % 2 = 0 THEN $4::uuid ELSE $5::uuid END,
               $6::timestamptz + make_interval(mins => g),
               CASE WHEN ($3::text[])[1 + g % 6] = 'sent'
                    THEN $6::timestamptz + make_interval(hours => 5, mins => -g) END
        FROM generate_series(1, 120) g
        """,
        ids["spring"],
        ids["summer"],
        statuses,
        ids["alpha"],
        ids["beta"],
        T0,
    )
    return ids


async def _all_pages(
    client: httpx.AsyncClient, headers: dict[str, str], params: dict[str, Any]
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        answer = await client.get(
            "/api/messages", params={**params, **({"cursor": cursor} if cursor else {})},
            headers=headers,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        page = answer.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_every_filter_pages_through_its_messages_without_gaps_or_repeats(
    client: httpx.AsyncClient, db: Conn, fleet: dict[str, Any], viewer: dict[str, Any]
) -> None:
    async def expected(where: str, *args: Any, order: str = "created_at") -> list[int]:
        rows = await db.fetch(
            f"SELECT id FROM messages WHERE {where} ORDER BY {order} DESC, id DESC",  # noqa: S608
            *args,
        )
        return [r["id"] for r in rows]

    cases = [
        ({}, await expected("true")),
        ({"campaign_id": str(fleet["spring"])},
         await expected("campaign_id = $1", fleet["spring"])),
        ({"account_id": str(fleet["beta"])}, await expected("account_id = $1", fleet["beta"])),
        ({"status": "failed"}, await expected("status = 'failed'")),
        ({"email": "USER7@Example.COM"}, await expected("email = 'user7@example.com'")),
        (
            {"created_after": (T0 + timedelta(minutes=10)).isoformat(),
             "created_before": (T0 + timedelta(minutes=50)).isoformat(),
             "campaign_id": str(fleet["summer"])},
            await expected(
                "created_at >= $1 AND created_at < $2 AND campaign_id = $3",
                T0 + timedelta(minutes=10), T0 + timedelta(minutes=50), fleet["summer"],
            ),
        ),
        (
            {"sent_after": (T0 + timedelta(hours=4)).isoformat()},
            await expected("sent_at >= $1", T0 + timedelta(hours=4), order="sent_at"),
        ),
    ]  # fmt: skip
    for params, ids in cases:
        assert ids, params
        items = await _all_pages(client, viewer["headers"], {**params, "limit": 7})
        assert [m["id"] for m in items] == ids, params


async def test_a_page_shows_each_message_status_and_fields(
    client: httpx.AsyncClient, fleet: dict[str, Any], viewer: dict[str, Any]
) -> None:
    answer = await client.get(
        "/api/messages", params={"email": "user1@example.com"}, headers=viewer["headers"]
    )
    (item,) = answer.json()["items"]
    assert item["email"] == "user1@example.com"
    assert item["status"] == "sent"
    assert item["campaign_id"] == str(fleet["summer"])
    assert item["account_id"] == str(fleet["beta"])
    assert answer.json()["next_cursor"] is None


async def test_bad_filters_and_cursors_are_refused_with_a_problem(
    client: httpx.AsyncClient, fleet: dict[str, Any], viewer: dict[str, Any]
) -> None:
    for params in (
        {"status": "lost"},
        {"campaign_id": "nope"},
        {"created_after": "2025-03-01T00:00:00"},  # no offset
        {"cursor": "garbage"},
        {"limit": 0},
    ):
        answer = await client.get("/api/messages", params=params, headers=viewer["headers"])
        assert answer.status_code in (400, 422), params
        assert answer.headers["content-type"] == "application/problem+json"
    missing = await client.get("/api/messages/999999", headers=viewer["headers"])
    assert missing.status_code == 404


async def test_messages_and_events_need_a_login(client: httpx.AsyncClient) -> None:
    for path in ("/api/messages", "/api/messages/1", "/api/events", "/api/events/feed"):
        assert (await client.get(path)).status_code == 401, path


async def _delivered(db: Conn, ids: dict[str, Any]) -> int:
    """A message sent on its second attempt, opened twice (once by a proxy), clicked, bounced.

    Attempts and tracking hits are written by the dispatcher's recorder, as from the bus; the
    bounce as the bouncer records one (an inbound report and its `bounced` event).
    """
    message_id: int = await db.fetchval(
        "INSERT INTO messages (campaign_id, email, status, account_id, attempts, message_id,"
        " last_code, created_at, sent_at, bounce, bounced_at)"
        " VALUES ($1, 'ada@example.com', 'sent', $2, 2, '<m1@example.com>', 250, $3, $4,"
        " 'hard', $5) RETURNING id",
        ids["spring"],
        ids["alpha"],
        T0,
        T0 + timedelta(seconds=65),
        T0 + timedelta(minutes=10),
    )
    attempt = {"message_id": message_id, "campaign_id": ids["spring"], "account_id": ids["alpha"]}
    await recorder.record_attempts(
        db,
        [
            SendAttempt(**attempt, attempt=1, outcome="deferred", smtp_code=451,
                        detail="4.7.1 greylisted", attempted_at=T0 + timedelta(seconds=5)),
            SendAttempt(**attempt, attempt=2, outcome="sent", smtp_code=250,
                        detail="2.0.0 queued as ABC", attempted_at=T0 + timedelta(seconds=65)),
        ],
    )  # fmt: skip
    hit = {"message_id": message_id, "user_agent": "Mozilla/5.0"}
    await recorder.record_tracking_hits(
        db,
        "opened",
        [
            TrackingHit(**hit, key="o1", occurred_at=T0 + timedelta(minutes=2),
                        ip="203.0.113.77"),
            TrackingHit(**hit, key="o2", occurred_at=T0 + timedelta(minutes=3),
                        ip="2001:db8:abcd:12::1", machine=True, machine_reason="apple-mpp"),
        ],
    )  # fmt: skip
    await recorder.record_tracking_hits(
        db,
        "clicked",
        [TrackingHit(**hit, key="c1", occurred_at=T0 + timedelta(minutes=4), ip="203.0.113.77",
                     url="https://example.com/spring")],
    )  # fmt: skip
    report = await db.fetchval(
        "INSERT INTO inbound_reports (account_id, folder, uidvalidity, uid, digest, kind, size)"
        " VALUES ($1, 'INBOX', 1, 1, '\\x01', 'bounce', 100) RETURNING id",
        ids["alpha"],
    )
    await db.execute(
        "INSERT INTO events (occurred_at, type, campaign_id, message_id, account_id, data)"
        " VALUES ($1, 'bounced', $2, $3, $4, $5::jsonb)",
        T0 + timedelta(minutes=10),
        ids["spring"],
        message_id,
        ids["alpha"],
        json.dumps({
            "address": "ada@example.com", "bounce": "hard", "status": "5.1.1",
            "diagnostic": "smtp; 550 5.1.1 user unknown", "reason": "5.1.1 bad mailbox",
            "action": "suppressed:hard-bounce", "matched_by": "message-id", "report_id": report,
        }),
    )  # fmt: skip
    return message_id


async def test_a_message_shows_its_attempts_bounce_opens_and_clicks(
    client: httpx.AsyncClient, db: Conn, admin: dict[str, Any], viewer: dict[str, Any]
) -> None:
    ids = await _setup(client, admin)
    message_id = await _delivered(db, ids)
    answer = await client.get(f"/api/messages/{message_id}", headers=viewer["headers"])
    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert shown["status"] == "sent"
    assert shown["bounce"] == "hard"
    assert [
        (a["attempt"], a["outcome"], a["smtp_code"], a["detail"], a["since_enqueued_s"],
         a["since_previous_s"])
        for a in shown["send_attempts"]
    ] == [
        (1, "deferred", 451, "4.7.1 greylisted", 5.0, None),
        (2, "sent", 250, "2.0.0 queued as ABC", 65.0, 60.0),
    ]  # fmt: skip
    (bounce,) = shown["feedback"]
    assert bounce["type"] == "bounced"
    assert (bounce["bounce"], bounce["status"], bounce["action"]) == (
        "hard", "5.1.1", "suppressed:hard-bounce",
    )  # fmt: skip
    assert shown["tracking_total"] == 3
    assert [
        (t["type"], t["ip"], t["user_agent"], t["machine"], t["machine_reason"], t["url"])
        for t in shown["tracking"]
    ] == [
        ("clicked", "203.0.113.0", "Mozilla/5.0", False, None, "https://example.com/spring"),
        ("opened", "2001:db8:abcd::", "Mozilla/5.0", True, "apple-mpp", None),
        ("opened", "203.0.113.0", "Mozilla/5.0", False, None, None),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "ipv4", "ipv6"),
    [
        ("full", "203.0.113.77", "2001:db8:abcd:12::1"),
        ("truncated", "203.0.113.0", "2001:db8:abcd::"),
        ("none", None, None),
    ],
)
async def test_tracking_ips_are_shown_as_the_privacy_setting_allows(
    settings: Settings,
    client: httpx.AsyncClient,
    db: Conn,
    admin: dict[str, Any],
    mode: IpShown,
    ipv4: str | None,
    ipv6: str | None,
) -> None:
    ids = await _setup(client, admin)
    message_id = await _delivered(db, ids)
    # The app was built with this very object: its lifespan hands it to every request.
    privacy = settings.privacy
    before = privacy.ip
    privacy.ip = mode
    try:
        detail = (await client.get(f"/api/messages/{message_id}", headers=admin["headers"])).json()
        events = await client.get(
            "/api/events", params={"message_id": message_id, "type": "opened"},
            headers=admin["headers"],
        )  # fmt: skip
    finally:
        privacy.ip = before
    assert [t["ip"] for t in detail["tracking"]] == [ipv4, ipv6, ipv4]
    assert [e["data"].get("ip") for e in events.json()["items"]] == [ipv6, ipv4]


async def test_events_list_filters_and_pages_newest_first(
    client: httpx.AsyncClient, db: Conn, admin: dict[str, Any], viewer: dict[str, Any]
) -> None:
    ids = await _setup(client, admin)
    message_id = await _delivered(db, ids)
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"message_id": message_id, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/events", params=params, headers=viewer["headers"])).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    rows = await db.fetch(
        "SELECT id FROM events WHERE message_id = $1 ORDER BY occurred_at DESC, id DESC",
        message_id,
    )
    assert seen == [r["id"] for r in rows]
    assert len(seen) == 6  # 2 attempts, 2 opens, a click, a bounce
    clicks = await client.get(
        "/api/events", params={"type": "clicked", "campaign_id": str(ids["spring"])},
        headers=viewer["headers"],
    )  # fmt: skip
    (click,) = clicks.json()["items"]
    assert set(click) == {
        "id", "occurred_at", "type", "campaign_id", "message_id", "account_id", "data",
    }  # fmt: skip
    assert click["data"]["url"] == "https://example.com/spring"


async def _event(db: Conn, kind: str = "opened", campaign: Any = None) -> int:
    event_id: int = await db.fetchval(
        "INSERT INTO events (occurred_at, type, campaign_id) VALUES (now(), $1, $2) RETURNING id",
        kind,
        campaign,
    )
    return event_id


async def _feed(
    client: httpx.AsyncClient, headers: dict[str, str], after: str | None, **params: Any
) -> dict[str, Any]:
    query = {**params, **({"after": after} if after is not None else {})}
    answer = await client.get("/api/events/feed", params=query, headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_the_feed_tails_events_oldest_first_and_keeps_its_cursor_when_idle(
    client: httpx.AsyncClient, db: Conn, viewer: dict[str, Any]
) -> None:
    for _ in range(5):
        await _event(db)
    first = await _feed(client, viewer["headers"], None, limit=3)
    assert first["items"] == []  # without a cursor: the end, from which what comes follows
    idle = await _feed(client, viewer["headers"], first["next_cursor"])
    assert idle == {"items": [], "next_cursor": first["next_cursor"]}
    new = [await _event(db, "clicked"), await _event(db, "opened")]
    only_clicks = await _feed(client, viewer["headers"], first["next_cursor"], type="clicked")
    assert [e["id"] for e in only_clicks["items"]] == new[:1]
    paged = await _feed(client, viewer["headers"], first["next_cursor"], limit=1)
    assert [e["id"] for e in paged["items"]] == new[:1]
    rest = await _feed(client, viewer["headers"], paged["next_cursor"])
    assert [e["id"] for e in rest["items"]] == new[1:]
    refused = await client.get(
        "/api/events/feed", params={"after": "bm9wZQ"}, headers=viewer["headers"]
    )
    assert refused.status_code == 422


async def test_the_feed_does_not_skip_an_event_committed_after_a_later_one(
    client: httpx.AsyncClient, db: Conn, database_dsn: str, viewer: dict[str, Any]
) -> None:
    start = (await _feed(client, viewer["headers"], None))["next_cursor"]
    slow = await asyncpg.connect(database_dsn)
    try:
        transaction = slow.transaction()
        await transaction.start()
        # Takes its id first, commits last.
        late: int = await slow.fetchval(
            "INSERT INTO events (occurred_at, type) VALUES (now(), 'late') RETURNING id"
        )
        early = await _event(db)
        assert early > late
        served: list[int] = []
        cursor = start
        for _ in range(3):
            answer = await _feed(client, viewer["headers"], cursor)
            served += [e["id"] for e in answer["items"]]
            cursor = answer["next_cursor"]
        assert served == []  # `early` waits behind the gap of `late`
        await asyncio.sleep(feed.GAP_GRACE_MS / 1000 + 0.2)
        assert (await _feed(client, viewer["headers"], cursor))["items"] == []  # still running
        await transaction.commit()
    finally:
        await slow.close()
    answer = await _feed(client, viewer["headers"], cursor)
    assert [e["id"] for e in answer["items"]] == [late, early]


async def test_the_feed_goes_past_a_rolled_back_id_after_the_grace(
    client: httpx.AsyncClient, db: Conn, database_dsn: str, viewer: dict[str, Any]
) -> None:
    start = (await _feed(client, viewer["headers"], None))["next_cursor"]
    slow = await asyncpg.connect(database_dsn)
    try:
        transaction = slow.transaction()
        await transaction.start()
        await slow.execute("INSERT INTO events (occurred_at, type) VALUES (now(), 'lost')")
        after_it = await _event(db)
        waiting = await _feed(client, viewer["headers"], start)
        assert waiting["items"] == []
        await transaction.rollback()
    finally:
        await slow.close()
    cursor = waiting["next_cursor"]
    served: list[int] = []
    for _ in range(30):
        answer = await _feed(client, viewer["headers"], cursor)
        served += [e["id"] for e in answer["items"]]
        cursor = answer["next_cursor"]
        if served:
            break
        await asyncio.sleep(0.1)
    assert served == [after_it]
