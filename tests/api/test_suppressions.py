"""The suppression list: roles, adding and removing, filters and pages, CSV import and export."""

import csv
import io
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from .conftest import Conn, campaign_body

CSV = {"Content-Type": "text/csv"}
LISTED = "SELECT email, campaign_id, reason, expires_at FROM suppressions"


def csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def later(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


async def queue(db: Conn, campaign_id: str, email: str, status: str = "queued") -> int:
    message_id: int = await db.fetchval(
        "INSERT INTO messages (campaign_id, email, status) VALUES ($1, $2, $3) RETURNING id",
        uuid.UUID(campaign_id),
        email,
        status,
    )
    return message_id


async def statuses(db: Conn) -> dict[tuple[str, str], str]:
    rows = await db.fetch("SELECT campaign_id, email, status FROM messages")
    return {(str(r["campaign_id"]), r["email"]): r["status"] for r in rows}


async def seed(db: Conn, *rows: tuple[Any, ...]) -> list[int]:
    """Insert suppressions: (email, campaign_id, reason, source, created_at, expires_at)."""
    ids = []
    for email, campaign_id, reason, source, created_at, expires_at in rows:
        ids.append(
            await db.fetchval(
                "INSERT INTO suppressions (email, campaign_id, reason, source, created_at,"
                " expires_at) VALUES ($1, $2, $3, $4, coalesce($5, now()), $6) RETURNING id",
                email,
                None if campaign_id is None else uuid.UUID(campaign_id),
                reason,
                source,
                created_at,
                expires_at,
            )
        )
    return ids


@pytest.fixture
async def other_campaign(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str
) -> str:
    response = await client.post(
        "/api/campaigns", json=campaign_body(name="autumn"), headers=operator["headers"]
    )
    return str(response.json()["id"])


# --- roles --------------------------------------------------------------------------------


async def test_every_suppression_route_needs_credentials_and_a_viewer_only_reads(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn
) -> None:
    [entry] = await seed(db, ("a@example.com", None, "manual", None, None, None))
    routes = [
        ("GET", "/api/suppressions", None, 200),
        ("GET", "/api/suppressions/export", None, 200),
        ("GET", f"/api/suppressions/{entry}", None, 200),
        ("POST", "/api/suppressions", {"email": "b@example.com"}, 403),
        ("POST", "/api/suppressions/import", None, 403),
        ("DELETE", f"/api/suppressions/{entry}", None, 403),
    ]
    for method, path, body, as_viewer in routes:
        anonymous = await client.request(method, path, json=body)
        assert anonymous.status_code == 401, (method, path)
        response = await client.request(
            method,
            path,
            json=body,
            content=None if body else "email\nc@example.com\n",
            headers={**viewer["headers"], **({} if body else CSV)},
        )
        assert response.status_code == as_viewer, (method, path, response.text)
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1


# --- adding, reading, removing ------------------------------------------------------------


async def test_adding_an_address_cancels_its_unsent_messages_in_every_campaign(
    client: httpx.AsyncClient,
    db: Conn,
    operator: dict[str, Any],
    campaign_id: str,
    other_campaign: str,
) -> None:
    await queue(db, campaign_id, "Gone@Example.com")
    await queue(db, other_campaign, "gone@example.com", "deferred")
    await queue(db, other_campaign, "kept@example.com")

    response = await client.post(
        "/api/suppressions",
        json={"email": "gone@EXAMPLE.com", "reason": "asked by phone"},
        headers=operator["headers"],
    )

    assert response.status_code == 201, response.text
    added = response.json()
    assert added["created"] is True
    assert added["cancelled"] == 2
    entry = added["suppression"]
    assert entry["email"] == "gone@example.com"
    assert entry["campaign_id"] is None
    assert entry["reason"] == "asked by phone"
    assert entry["source"] == f"api:user:{operator['id']}"
    assert entry["expires_at"] is None
    assert entry["active"] is True
    assert await statuses(db) == {
        (campaign_id, "Gone@Example.com"): "cancelled",
        (other_campaign, "gone@example.com"): "cancelled",
        (other_campaign, "kept@example.com"): "queued",
    }
    last_error = await db.fetchval("SELECT last_error FROM messages WHERE status = 'cancelled'")
    assert last_error == "suppressed: asked by phone"


async def test_messages_being_sent_or_sent_are_left_alone(
    client: httpx.AsyncClient, db: Conn, operator: dict[str, Any]
) -> None:
    # An address has one message per campaign: one campaign for each status.
    rows = []
    for status in ("queued", "assigned", "deferred", "sending", "sent", "failed"):
        created = await client.post(
            "/api/campaigns", json=campaign_body(name=status), headers=operator["headers"]
        )
        rows.append((created.json()["id"], status))
        await queue(db, created.json()["id"], "gone@example.com", status)

    response = await client.post(
        "/api/suppressions", json={"email": "gone@example.com"}, headers=operator["headers"]
    )

    assert response.json()["cancelled"] == 3
    after = await statuses(db)
    assert [after[(c, "gone@example.com")] for c, _ in rows] == [
        "cancelled", "cancelled", "cancelled", "sending", "sent", "failed",
    ]  # fmt: skip


async def test_a_campaign_suppression_cancels_only_that_campaigns_messages(
    client: httpx.AsyncClient,
    db: Conn,
    operator: dict[str, Any],
    campaign_id: str,
    other_campaign: str,
) -> None:
    await queue(db, campaign_id, "x@example.com")
    await queue(db, other_campaign, "x@example.com")

    response = await client.post(
        "/api/suppressions",
        json={"email": "x@example.com", "campaign_id": campaign_id},
        headers=operator["headers"],
    )

    assert response.status_code == 201, response.text
    assert response.json()["suppression"]["campaign_id"] == campaign_id
    assert response.json()["cancelled"] == 1
    assert await statuses(db) == {
        (campaign_id, "x@example.com"): "cancelled",
        (other_campaign, "x@example.com"): "queued",
    }


async def test_adding_an_address_again_answers_200_with_the_same_entry(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    h = operator["headers"]
    first = await client.post("/api/suppressions", json={"email": "x@example.com"}, headers=h)
    again = await client.post(
        "/api/suppressions", json={"email": "X@example.com", "reason": "other"}, headers=h
    )

    assert first.status_code == 201
    assert again.status_code == 200, again.text
    assert again.json()["created"] is False
    # A permanent suppression keeps its reason and source.
    assert again.json()["suppression"] == first.json()["suppression"]


async def test_a_temporary_suppression_is_lengthened_or_made_permanent_never_shortened(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn
) -> None:
    h = operator["headers"]
    url = "/api/suppressions"
    week, day = later(days=7), later(days=1)
    first = await client.post(url, json={"email": "t@example.com", "expires_at": week}, headers=h)
    shorter = await client.post(url, json={"email": "t@example.com", "expires_at": day}, headers=h)
    permanent = await client.post(url, json={"email": "t@example.com"}, headers=h)
    temporary = await client.post(
        url, json={"email": "t@example.com", "expires_at": day}, headers=h
    )

    assert first.status_code == 201
    assert datetime.fromisoformat(first.json()["suppression"]["expires_at"]) == (
        datetime.fromisoformat(week)
    )
    assert shorter.json()["suppression"]["expires_at"] == first.json()["suppression"]["expires_at"]
    assert permanent.status_code == temporary.status_code == 200
    assert permanent.json()["suppression"]["expires_at"] is None
    assert temporary.json()["suppression"]["expires_at"] is None

    # One that ran out counts as new and takes the new reason.
    await db.execute("UPDATE suppressions SET expires_at = now() - interval '1 day'")
    revived = await client.post(
        url, json={"email": "t@example.com", "reason": "again", "expires_at": week}, headers=h
    )
    assert revived.status_code == 201, revived.text
    assert revived.json()["suppression"]["reason"] == "again"
    assert revived.json()["suppression"]["active"] is True


async def test_bad_additions_are_refused_with_a_reason(
    client: httpx.AsyncClient, operator: dict[str, Any], campaign_id: str
) -> None:
    h = operator["headers"]
    refused = [
        ({"email": "x@example.com", "expires_at": later(minutes=-1)}, 422),
        ({"email": "x@example.com", "expires_at": "2999-01-01T00:00:00"}, 422),  # no offset
        ({"email": "x@example.com", "expires_at": "9999-12-31T23:59:59-01:00"}, 422),
        ({"email": "x@example.com", "campaign_id": str(uuid.uuid4())}, 404),
        ({"email": "x@example.com", "campaign_id": "not-a-uuid"}, 422),
        ({"email": "not an address"}, 422),
        ({"email": "x@example.com", "reason": ""}, 422),
        ({"email": "x@example.com", "reason": "r" * 101}, 422),
        ({"email": "x@example.com", "reason": "a\r\nb"}, 422),
        ({"email": "x@example.com", "source": "bouncer:report:1"}, 422),
        ({}, 422),
    ]
    for body, expected in refused:
        response = await client.post("/api/suppressions", json=body, headers=h)
        assert response.status_code == expected, (body, response.text)
        assert response.json()["detail"], body
    assert (await client.get("/api/suppressions", headers=h)).json()["items"] == []


async def test_a_suppression_is_shown_and_removed_but_its_cancellations_stay(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn, campaign_id: str
) -> None:
    h = operator["headers"]
    await queue(db, campaign_id, "x@example.com")
    added = await client.post("/api/suppressions", json={"email": "x@example.com"}, headers=h)
    entry = added.json()["suppression"]
    url = f"/api/suppressions/{entry['id']}"

    assert (await client.get(url, headers=h)).json() == entry
    removed = await client.delete(url, headers=h)
    assert removed.status_code == 204
    assert removed.content == b""
    assert (await client.get(url, headers=h)).status_code == 404
    assert (await client.delete(url, headers=h)).status_code == 404
    assert await statuses(db) == {(campaign_id, "x@example.com"): "cancelled"}
    for bad in ("abc", "0", str(2**63)):
        response = await client.get(f"/api/suppressions/{bad}", headers=h)
        assert response.status_code == 422, bad


# --- listing ------------------------------------------------------------------------------


async def test_the_list_filters_by_address_reason_source_scope_expiry_and_time(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn, campaign_id: str
) -> None:
    now = datetime.now(UTC)
    day = timedelta(days=1)
    ids = await seed(
        db,
        ("alice@example.com", None, "unsubscribed", "tracker:message:1", now - 3 * day, None),
        ("bob@example.com", campaign_id, "unsubscribed", "tracker:message:2", now - 2 * day, None),
        ("alice@example.org", None, "hard bounce", "bouncer:report:7", now - day, None),
        ("carol@example.com", None, "soft bounces", "bouncer:report:8", now, now - day / 24),
        ("Dave@Example.com", None, "manual", None, now, now + day),
    )
    a_com, bob, a_org, carol, dave = ids

    async def listed(**params: Any) -> list[int]:
        response = await client.get("/api/suppressions", params=params, headers=viewer["headers"])
        assert response.status_code == 200, (params, response.text)
        return [item["id"] for item in response.json()["items"]]

    assert await listed() == [dave, carol, a_org, bob, a_com]
    assert await listed(email="ALICE@example.com") == [a_com]
    assert await listed(email="dave@example.com") == [dave]
    assert await listed(q="alice") == [a_org, a_com]
    assert await listed(q="E.ORG") == [a_org]
    assert await listed(q="%") == []
    assert await listed(reason="unsubscribed") == [bob, a_com]
    assert await listed(source="bouncer:") == [carol, a_org]
    assert await listed(source="tracker:message:1") == [a_com]
    assert await listed(source="_") == []
    assert await listed(campaign_id=campaign_id) == [bob]
    assert await listed(scope="campaign") == [bob]
    assert await listed(scope="global", reason="unsubscribed") == [a_com]
    assert await listed(active="false") == [carol]
    assert await listed(active="true", q="example.com") == [dave, bob, a_com]
    assert await listed(created_after=(now - timedelta(days=2)).isoformat()) == [
        dave, carol, a_org, bob,
    ]  # fmt: skip
    assert await listed(created_before=(now - timedelta(days=1)).isoformat()) == [bob, a_com]

    h = viewer["headers"]
    for params in (
        {"campaign_id": "x"},
        {"scope": "everywhere"},
        {"scope": "global", "campaign_id": campaign_id},
        {"active": "maybe"},
        {"created_after": "yesterday"},
        {"created_before": "2024-01-01T00:00:00"},  # no offset
        {"created_after": "0001-01-01T00:00:00+01:00"},  # before PostgreSQL's first year
        {"q": ""},
        {"q": "a\x00b"},
        {"email": "a\x00@example.com"},
        {"source": "\x00"},
    ):
        for path in ("/api/suppressions", "/api/suppressions/export"):
            response = await client.get(path, params=params, headers=h)
            assert response.status_code == 422, (path, params)
            assert response.json()["detail"], params
    for limit in (0, 1001):
        response = await client.get("/api/suppressions", params={"limit": limit}, headers=h)
        assert response.status_code == 422, limit


async def test_the_list_pages_newest_first_with_a_cursor(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn
) -> None:
    # Many entries share a creation time: the id breaks the tie, so none is lost or repeated.
    start = datetime.now(UTC) - timedelta(hours=1)
    rows = [
        (f"u{n}@example.com", None, "manual", None, start + timedelta(minutes=n // 10), None)
        for n in range(45)
    ]
    ids = await seed(db, *rows)
    expected = sorted(ids, key=lambda i: (rows[ids.index(i)][4], i), reverse=True)

    seen: list[int] = []
    pages = 0
    params: dict[str, Any] = {"limit": 20}
    while True:
        page = (
            await client.get("/api/suppressions", params=params, headers=viewer["headers"])
        ).json()
        pages += 1
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]

    assert pages == 3
    assert seen == expected
    exact = await client.get("/api/suppressions", params={"limit": 45}, headers=viewer["headers"])
    assert exact.json()["next_cursor"] is None

    for cursor in ("garbage", "", "x" * 201, "MjAyNHwx", "bm90LWEtZGF0ZXwx", "é"):
        response = await client.get(
            "/api/suppressions", params={"cursor": cursor}, headers=viewer["headers"]
        )
        assert response.status_code == 422, cursor
        assert response.json()["detail"], cursor


# --- import -------------------------------------------------------------------------------


async def test_an_import_stores_valid_rows_and_reports_the_others_by_row(
    client: httpx.AsyncClient,
    operator: dict[str, Any],
    db: Conn,
    campaign_id: str,
    other_campaign: str,
) -> None:
    await seed(db, ("known@example.com", None, "unsubscribed", "tracker:message:9", None, None))
    await queue(db, campaign_id, "new@example.com")
    await queue(db, other_campaign, "scoped@example.com")
    await queue(db, campaign_id, "scoped@example.com")
    missing = str(uuid.uuid4())
    week = later(days=7)
    body = csv_text(
        [
            ["Email", "reason", "campaign_id", "expires_at", "note"],  # row 1
            ["new@example.com", "", "", "", "ignored"],  # 2: reason defaults to manual
            ["scoped@example.com", "complained", campaign_id, week, ""],  # 3
            ["KNOWN@example.com", "again", "", "", ""],  # 4: already present
            ["not an address", "", "", "", ""],  # 5
            [],  # 6: blank
            ["late@example.com", "", "", later(days=-1), ""],  # 7
            ["orphan@example.com", "", missing, "", ""],  # 8
            ["New@Example.com", "repeat", "", "", ""],  # 9: repeats row 2
            ["when@example.com", "", "", "next tuesday", ""],  # 10
            ["", "no address", "", "", ""],  # 11
            ["long@example.com", "r" * 101, "", "", ""],  # 12
            ["bad-campaign@example.com", "", "nope", "", ""],  # 13
            ["short@example.com"],  # 14: missing cells are empty
            ["far@example.com", "", "", "9999-12-31T23:59:59-01:00"],  # 15: past year 9999
        ]
    )

    response = await client.post(
        "/api/suppressions/import", content=body, headers={**operator["headers"], **CSV}
    )

    assert response.status_code == 200, response.text
    report = response.json()
    assert {k: v for k, v in report.items() if k != "invalid"} == {
        "dry_run": False,
        "rows": 13,
        "imported": 3,
        "already_present": 1,
        "repeated": 1,
        "invalid_count": 8,
        "cancelled": 2,
    }
    invalid = {row["row"]: row for row in report["invalid"]}
    assert sorted(invalid) == [5, 7, 8, 10, 11, 12, 13, 15]
    assert invalid[5]["email"] == "not an address"
    assert "invalid email address" in invalid[5]["reason"]
    assert "future" in invalid[7]["reason"]
    assert invalid[8]["reason"] == f"no campaign {missing}"
    assert invalid[10]["reason"].startswith("expires_at")
    assert invalid[11]["reason"].startswith("email")
    assert invalid[12]["reason"].startswith("reason")
    assert invalid[13]["reason"].startswith("campaign_id")
    assert invalid[15]["reason"] == "expires_at is out of range"

    stored = {
        (r["email"], r["campaign_id"]): r
        for r in await db.fetch(
            "SELECT email, campaign_id, reason, source, expires_at FROM suppressions"
        )
    }
    assert set(stored) == {
        ("known@example.com", None),
        ("new@example.com", None),
        ("scoped@example.com", uuid.UUID(campaign_id)),
        ("short@example.com", None),
    }
    assert stored[("known@example.com", None)]["reason"] == "unsubscribed"
    assert stored[("new@example.com", None)]["reason"] == "manual"
    assert stored[("new@example.com", None)]["source"] == f"api:user:{operator['id']}:import"
    scoped = stored[("scoped@example.com", uuid.UUID(campaign_id))]
    assert scoped["expires_at"] == datetime.fromisoformat(week)
    assert await statuses(db) == {
        (campaign_id, "new@example.com"): "cancelled",
        (campaign_id, "scoped@example.com"): "cancelled",
        (other_campaign, "scoped@example.com"): "queued",
    }


async def test_an_import_follows_the_rules_of_adding_one(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn
) -> None:
    day = timedelta(days=1)
    now = datetime.now(UTC)
    await seed(
        db,
        ("perm@example.com", None, "unsubscribed", "tracker:message:1", None, None),
        ("temp@example.com", None, "soft bounces", "bouncer:report:1", None, now + day),
        ("gone@example.com", None, "soft bounces", "bouncer:report:2", None, now - day),
    )
    week = later(days=7)
    body = csv_text(
        [
            ["email", "reason", "expires_at"],
            ["perm@example.com", "manual", week],
            ["temp@example.com", "manual", week],
            ["gone@example.com", "manual", ""],
        ]
    )
    response = await client.post(
        "/api/suppressions/import", content=body, headers={**operator["headers"], **CSV}
    )
    report = response.json()

    assert (report["imported"], report["already_present"]) == (1, 2)
    rows = {
        r["email"]: r
        for r in await db.fetch("SELECT email, reason, source, expires_at FROM suppressions")
    }
    assert rows["perm@example.com"]["expires_at"] is None
    assert rows["perm@example.com"]["reason"] == "unsubscribed"
    assert rows["temp@example.com"]["expires_at"] == datetime.fromisoformat(week)
    assert rows["gone@example.com"]["expires_at"] is None
    assert rows["gone@example.com"]["reason"] == "manual"


async def test_a_dry_run_validates_and_counts_but_stores_nothing(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn, campaign_id: str
) -> None:
    await seed(db, ("known@example.com", None, "manual", None, None, None))
    await queue(db, campaign_id, "new@example.com")
    body = "email\nnew@example.com\nknown@example.com\nbroken\n"

    response = await client.post(
        "/api/suppressions/import",
        params={"dry_run": "true"},
        content=body,
        headers={**operator["headers"], "Content-Type": "text/csv; charset=utf-8"},
    )

    assert response.status_code == 200, response.text
    report = response.json()
    assert report["dry_run"] is True
    assert (report["imported"], report["already_present"], report["invalid_count"]) == (1, 1, 1)
    assert report["cancelled"] == 0
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1
    assert await statuses(db) == {(campaign_id, "new@example.com"): "queued"}


async def test_a_plain_list_of_addresses_imports_without_a_header(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn
) -> None:
    body = "\ufeffa@example.com\r\nb@example.com\r\n\r\nc@example.com"

    response = await client.post(
        "/api/suppressions/import", content=body.encode(), headers={**operator["headers"], **CSV}
    )

    assert response.status_code == 200, response.text
    assert response.json()["imported"] == 3
    assert response.json()["rows"] == 3
    emails = await db.fetch("SELECT email FROM suppressions ORDER BY email")
    assert [r["email"] for r in emails] == ["a@example.com", "b@example.com", "c@example.com"]


async def test_files_that_are_not_utf8_csv_are_refused_with_a_reason(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn
) -> None:
    h = {**operator["headers"], **CSV}
    url = "/api/suppressions/import"
    for content_type in ("application/json", "text/plain", "text/csv; charset=latin-1", None):
        headers = dict(operator["headers"])
        if content_type:
            headers["Content-Type"] = content_type
        response = await client.post(url, content=b"email\na@example.com\n", headers=headers)
        assert response.status_code == 415, content_type
        assert response.json()["detail"]
    bad = {
        "no email column": b"address,reason\na@example.com,x\n",
        "email twice": b"email,EMAIL\na@example.com,b@example.com\n",
        "not UTF-8": "email\nj\xf6rg@example.com\n".encode("latin-1"),
        "open quote": b'email\n"a@example.com\n',
        "text after a quote": b'email,reason\n"a@example.com"x,y\n',
        "empty": b"",
        "only blank lines": b"\n\n",
        "huge field": b"email\n" + b"a" * 200_000 + b"\n",
    }
    for what, content in bad.items():
        response = await client.post(url, content=content, headers=h)
        assert response.status_code == 422, (what, response.text)
        assert response.json()["detail"], what
    # A NUL character is not a broken file, just an unusable value.
    nul = await client.post(url, content=b"email,reason\na@example.com,x\x00y\n", headers=h)
    assert nul.json()["invalid"][0]["reason"] == "reason: must not contain NUL characters"
    too_large = b"email\n" + b"a@example.com\n" * (20 * 1024 * 1024 // 14 + 1)
    response = await client.post(url, content=too_large, headers=h)
    assert response.status_code == 413
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_an_import_lists_at_most_100_invalid_rows_but_counts_them_all(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    body = "email\n" + "".join(f"bad{n}\n" for n in range(250))

    response = await client.post(
        "/api/suppressions/import", content=body, headers={**operator["headers"], **CSV}
    )

    assert response.json()["invalid_count"] == 250
    assert [row["row"] for row in response.json()["invalid"]] == list(range(2, 102))


async def test_twenty_thousand_rows_import_in_seconds(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn, campaign_id: str
) -> None:
    await db.execute(
        "INSERT INTO messages (campaign_id, email)"
        " SELECT $1, 'user' || n || '@example.com' FROM generate_series(0, 19999, 2) n",
        uuid.UUID(campaign_id),
    )
    body = "email,reason\n" + "".join(f"user{n}@example.com,list cleaning\n" for n in range(20_000))

    started = time.perf_counter()
    response = await client.post(
        "/api/suppressions/import", content=body, headers={**operator["headers"], **CSV}
    )
    elapsed = time.perf_counter() - started

    assert response.status_code == 200, response.text
    assert response.json()["imported"] == 20_000
    assert response.json()["cancelled"] == 10_000
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 20_000
    assert elapsed < 10, f"{elapsed:.1f} s"


# --- export -------------------------------------------------------------------------------


async def test_an_export_imported_into_an_empty_list_gives_the_same_list(
    client: httpx.AsyncClient, operator: dict[str, Any], db: Conn, campaign_id: str
) -> None:
    # More rows than one streamed chunk, global and scoped, with and without expiry.
    await db.execute(
        """
        INSERT INTO suppressions (email, campaign_id, reason, source, expires_at)
        SELECT 'user' || n || '@example.com',
               CASE WHEN n % 3 = 0 THEN $1::uuid END,
               CASE WHEN n % 2 = 0 THEN 'unsubscribed' ELSE 'hard bounce, "5.1.1"' END,
               'tracker:message:' || n,
               CASE WHEN n % 5 = 0 THEN now() + n * interval '1 minute' END
        FROM generate_series(1, 2500) n
        """,
        uuid.UUID(campaign_id),
    )
    before = set(await db.fetch(LISTED))

    response = await client.get("/api/suppressions/export", headers=operator["headers"])

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == "attachment; filename=suppressions.csv"
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["id", "email", "campaign_id", "reason", "source", "created_at", "expires_at"]
    assert len(rows) == 2501
    ids = [int(row[0]) for row in rows[1:]]
    assert ids == sorted(ids, reverse=True)

    await db.execute("TRUNCATE suppressions")
    imported = await client.post(
        "/api/suppressions/import",
        content=response.content,
        headers={**operator["headers"], **CSV},
    )
    assert imported.json()["imported"] == 2500, imported.text
    assert set(await db.fetch(LISTED)) == before


async def test_an_export_takes_the_filters_of_the_list(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn
) -> None:
    await seed(
        db,
        ("a@example.com", None, "hard bounce", "bouncer:report:1", None, None),
        ("b@example.com", None, "unsubscribed", "tracker:message:1", None, None),
    )
    h = viewer["headers"]

    response = await client.get(
        "/api/suppressions/export", params={"source": "bouncer:"}, headers=h
    )
    empty = await client.get("/api/suppressions/export", params={"q": "nobody"}, headers=h)
    refused = await client.get("/api/suppressions/export", params={"scope": "x"}, headers=h)

    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["email"], r["reason"], r["campaign_id"]) for r in rows] == [
        ("a@example.com", "hard bounce", "")
    ]
    assert empty.text.splitlines() == ["id,email,campaign_id,reason,source,created_at,expires_at"]
    assert refused.status_code == 422
