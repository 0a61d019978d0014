"""What the bouncer read: the list of inbound reports, one report, its kept bytes, and the
mailbox block of an account's health."""

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from .conftest import Conn

URL = "/api/admin/inbound-reports"
KINDS = ("bounce", "complaint", "reply", "auto-reply", "unsubscribe", "unrecognized")
NOW = datetime.now(UTC).replace(microsecond=0)
RAW = (
    b"From: someone@example.net\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\n"
    b"What is this?\r\n\x00\xff binary tail\r\n"
)
HARD_BOUNCE = {
    "address": "gone@example.org",
    "bounce": "hard",
    "status": "5.1.1",
    "diagnostic": "550 5.1.1 no such user",
    "action_field": "failed",
    "reason": "the mailbox does not exist (5.1.1)",
    "message_id": None,
    "campaign_id": None,
    "matched_by": None,
    "action": "unmatched",
    "feedback_type": None,
}


async def add_account(db: Conn, name: str = "primary", imap: bool = True) -> uuid.UUID:
    """An SMTP account whose returns are read from a mailbox, or with `imap` false are not."""
    mailbox = ("imap.example.com", 993, "implicit", "bounces@example.com", b"sealed")
    account_id: uuid.UUID = await db.fetchval(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit,
                              imap_host, imap_port, imap_tls, imap_username, imap_password_enc)
        VALUES ($1, 'smtp.example.com', 587, 'starttls', 'news@example.com', 100,
                $2, $3, $4, $5, $6)
        RETURNING id
        """,
        name,
        *(mailbox if imap else (None,) * len(mailbox)),
    )
    return account_id


async def add_report(
    db: Conn,
    account_id: uuid.UUID,
    kind: str,
    at: datetime = NOW,
    *,
    matched: int = 0,
    problem: str | None = None,
    raw: bytes | None = None,
    details: list[dict[str, Any]] | None = None,
    published: bool = True,
) -> int:
    """Insert a report read at `at`; returns its id."""
    report_id: int = await db.fetchval(
        """
        INSERT INTO inbound_reports (account_id, folder, uidvalidity, uid, digest, kind, parser,
                                     sender, subject, size, truncated, details, matched, problem,
                                     raw, received_at, published_at)
        VALUES ($1, 'INBOX', 7, 1, sha256(gen_random_uuid()::text::bytea), $2, $3,
                'mailer-daemon@example.org', 'Undelivered Mail', $4, false, $5::jsonb, $6, $7,
                $8, $9, CASE WHEN $10 THEN $9::timestamptz END)
        RETURNING id
        """,
        account_id,
        kind,
        "none" if kind == "unrecognized" else "rfc3464",
        len(raw) if raw is not None else 2048,
        json.dumps(details or []),
        matched,
        problem,
        raw,
        at,
        published,
    )
    return report_id


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# --- roles --------------------------------------------------------------------------------


async def test_reports_need_credentials_and_only_an_operator_downloads_a_message(
    client: httpx.AsyncClient, viewer: dict[str, Any], operator: dict[str, Any], db: Conn
) -> None:
    account_id = await add_account(db)
    report_id = await add_report(db, account_id, "unrecognized", raw=RAW)
    routes = [URL, f"{URL}/{report_id}", f"{URL}/{report_id}/raw"]

    for route in routes:
        anonymous = await client.get(route)
        assert anonymous.status_code == 401, route
        assert anonymous.headers["www-authenticate"] == "Bearer"
    assert ids(await client.get(URL, headers=viewer["headers"])) == [report_id]
    shown = await client.get(f"{URL}/{report_id}", headers=viewer["headers"])
    assert shown.status_code == 200, shown.text
    refused = await client.get(f"{URL}/{report_id}/raw", headers=viewer["headers"])
    assert refused.status_code == 403
    assert "operator" in refused.json()["detail"]
    assert RAW not in refused.content

    download = await client.get(f"{URL}/{report_id}/raw", headers=operator["headers"])

    assert download.status_code == 200, download.text
    assert download.content == RAW
    assert download.headers["content-type"] == "message/rfc822"
    assert download.headers["content-disposition"] == f"attachment; filename=report-{report_id}.eml"


# --- one report ---------------------------------------------------------------------------


async def test_a_report_shows_what_was_read_and_what_was_done(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn
) -> None:
    account_id = await add_account(db)
    at = NOW - timedelta(hours=3)
    bounce = await add_report(
        db, account_id, "bounce", at, matched=0, details=[HARD_BOUNCE], published=False
    )
    kept = await add_report(db, account_id, "unrecognized", problem="no report part", raw=RAW)

    response = await client.get(f"{URL}/{bounce}", headers=viewer["headers"])

    assert response.status_code == 200, response.text
    body = response.json()
    assert datetime.fromisoformat(body.pop("received_at")) == at
    assert body == {
        "id": bounce,
        "account_id": str(account_id),
        "kind": "bounce",
        "parser": "rfc3464",
        "sender": "mailer-daemon@example.org",
        "subject": "Undelivered Mail",
        "size": 2048,
        "truncated": False,
        "matched": 0,
        "problem": None,
        "details": [HARD_BOUNCE],
        "published": False,
        "has_raw": False,
    }
    unrecognized = (await client.get(f"{URL}/{kept}", headers=viewer["headers"])).json()
    assert unrecognized["has_raw"] is True
    assert unrecognized["published"] is True
    assert unrecognized["problem"] == "no report part"
    assert unrecognized["size"] == len(RAW)
    listed = (await client.get(URL, headers=viewer["headers"])).json()["items"]
    assert [item["id"] for item in listed] == [kept, bounce]
    assert listed[1] | {"received_at": None} == body | {"received_at": None}


async def test_details_from_the_bouncer_are_shown_as_they_are_stored(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn
) -> None:
    account_id = await add_account(db)
    campaign_id = str(uuid.uuid4())
    complaint = {
        "address": "angry@example.org",
        "bounce": None,
        "status": None,
        "diagnostic": None,
        "action_field": None,
        "reason": None,
        "message_id": 42,
        "campaign_id": campaign_id,
        "matched_by": "header",
        "action": "suppressed:complaint",
        "feedback_type": "abuse",
    }
    older = {"address": "old@example.org", "action": "none"}
    report_id = await add_report(db, account_id, "complaint", matched=1, details=[complaint, older])

    body = (await client.get(f"{URL}/{report_id}", headers=viewer["headers"])).json()

    # A field a stored entry lacks reads as null.
    assert body["details"] == [complaint, {**dict.fromkeys(complaint), **older}]
    assert body["matched"] == 1


async def test_unknown_and_malformed_ids_are_refused(
    client: httpx.AsyncClient, viewer: dict[str, Any], operator: dict[str, Any], db: Conn
) -> None:
    account_id = await add_account(db)
    bounce = await add_report(db, account_id, "bounce")
    unrecognized = await add_report(db, account_id, "unrecognized")
    h = operator["headers"]

    for route in (f"{URL}/{bounce + 100}", f"{URL}/{bounce + 100}/raw"):
        missing = await client.get(route, headers=h)
        assert missing.status_code == 404, route
        assert f"no inbound report {bounce + 100}" in missing.json()["detail"]
    not_kept = await client.get(f"{URL}/{bounce}/raw", headers=h)
    assert not_kept.status_code == 404
    assert "only unrecognized messages are kept" in not_kept.json()["detail"]
    assert "kind bounce" in not_kept.json()["detail"]
    none_stored = await client.get(f"{URL}/{unrecognized}/raw", headers=h)
    assert none_stored.status_code == 404
    assert "stored none of its bytes" in none_stored.json()["detail"]
    for bad in ("abc", "0", "-1", str(2**63), "1.5"):
        for route in (f"{URL}/{bad}", f"{URL}/{bad}/raw"):
            response = await client.get(route, headers=h)
            assert response.status_code == 422, route


# --- the list -----------------------------------------------------------------------------


async def test_the_list_filters_by_account_kind_match_problem_and_time(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn
) -> None:
    first = await add_account(db, "first")
    second = await add_account(db, "second")
    day = timedelta(days=1)
    bounce = await add_report(db, first, "bounce", NOW - 4 * day, matched=1)
    complaint = await add_report(db, first, "complaint", NOW - 3 * day, matched=2)
    reply = await add_report(db, second, "reply", NOW - 2 * day)
    odd = await add_report(db, second, "unrecognized", NOW - day, problem="malformed MIME", raw=RAW)
    other_bounce = await add_report(db, second, "bounce", NOW, problem="no recipients")

    async def listed(**params: Any) -> list[int]:
        return ids(await client.get(URL, params=params, headers=viewer["headers"]))

    assert await listed() == [other_bounce, odd, reply, complaint, bounce]
    assert await listed(account_id=str(first)) == [complaint, bounce]
    assert await listed(account_id=str(uuid.uuid4())) == []
    assert await listed(kind="bounce") == [other_bounce, bounce]
    assert await listed(kind="unrecognized") == [odd]
    assert await listed(kind="auto-reply") == []
    assert await listed(matched="true") == [complaint, bounce]
    assert await listed(matched="false") == [other_bounce, odd, reply]
    assert await listed(problem="true") == [other_bounce, odd]
    assert await listed(problem="false") == [reply, complaint, bounce]
    assert await listed(received_after=(NOW - 3 * day).isoformat()) == [
        other_bounce,
        odd,
        reply,
        complaint,
    ]
    assert await listed(received_before=(NOW - 2 * day).isoformat()) == [complaint, bounce]
    assert await listed(
        received_after=(NOW - 3 * day).isoformat(), received_before=NOW.isoformat()
    ) == [odd, reply, complaint]
    assert await listed(kind="bounce", account_id=str(second), problem="true") == [other_bounce]
    assert await listed(kind="bounce", matched="true", account_id=str(second)) == []

    for params in (
        {"kind": "bounced"},
        {"account_id": "not-a-uuid"},
        {"matched": "maybe"},
        {"problem": "x"},
        {"received_after": "2024-01-01T00:00:00"},  # no offset
        {"received_before": "yesterday"},
    ):
        response = await client.get(URL, params=params, headers=viewer["headers"])
        assert response.status_code == 422, params


async def test_the_list_pages_newest_first_with_a_cursor(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn
) -> None:
    account_id = await add_account(db)
    other = await add_account(db, "other")
    # Three read at the same instant: the id orders them.
    times = [NOW - timedelta(minutes=n) for n in (5, 4, 3, 3, 3, 2, 1)]
    created = [await add_report(db, account_id, "bounce", at) for at in times]
    await add_report(db, other, "bounce", NOW)
    newest_first = sorted(
        zip(times, created, strict=True), key=lambda pair: (pair[0], pair[1]), reverse=True
    )
    expected = [report_id for _, report_id in newest_first]

    seen: list[list[int]] = []
    params: dict[str, Any] = {"limit": 3, "account_id": str(account_id)}
    while True:
        response = await client.get(URL, params=params, headers=viewer["headers"])
        page = response.json()
        assert page["limit"] == 3
        seen.append(ids(response))
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]

    assert seen == [expected[:3], expected[3:6], expected[6:]]
    default = (await client.get(URL, headers=viewer["headers"])).json()
    assert default["limit"] == 50
    assert default["next_cursor"] is None
    assert len(default["items"]) == 8
    exact = await client.get(
        URL, params={"limit": 7, "account_id": str(account_id)}, headers=viewer["headers"]
    )
    assert ids(exact) == expected
    assert exact.json()["next_cursor"] is None

    for bad in ({"limit": 0}, {"limit": 501}, {"limit": "x"}):
        response = await client.get(URL, params=bad, headers=viewer["headers"])
        assert response.status_code == 422, bad
    for cursor in ("garbage", "", "x" * 201, "MjAyNHwx", "bm90LWEtZGF0ZXwx", "é"):
        response = await client.get(URL, params={"cursor": cursor}, headers=viewer["headers"])
        assert response.status_code == 422, cursor
        assert response.json()["detail"], cursor


async def test_a_large_page_is_allowed(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn
) -> None:
    account_id = await add_account(db)
    await db.execute(
        """
        INSERT INTO inbound_reports (account_id, folder, uidvalidity, uid, digest, kind, size,
                                     received_at)
        SELECT $1, 'INBOX', 1, n, sha256(n::text::bytea), 'reply', 100,
               now() - n * interval '1 second'
        FROM generate_series(1, 501) AS n
        """,
        account_id,
    )

    first = await client.get(URL, params={"limit": 500}, headers=viewer["headers"])
    assert len(ids(first)) == 500
    rest = await client.get(
        URL, params={"limit": 500, "cursor": first.json()["next_cursor"]}, headers=viewer["headers"]
    )
    assert len(ids(rest)) == 1
    assert rest.json()["next_cursor"] is None


# --- account health -----------------------------------------------------------------------


@pytest.mark.parametrize("read", [False, True])
async def test_health_shows_how_the_mailbox_is_read_and_what_came_in_this_week(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn, read: bool
) -> None:
    account_id = await add_account(db)
    other = await add_account(db, "other")
    polled_at = NOW - timedelta(minutes=2)
    if read:
        await db.execute(
            "INSERT INTO mailbox_checkpoints (account_id, folder, uidvalidity, last_uid,"
            " polled_at, last_error) VALUES ($1, 'INBOX', 7, 42, $2, 'login failed')",
            account_id,
            polled_at,
        )
    for kind, days_ago in [
        ("bounce", 0),
        ("bounce", 1),
        ("bounce", 6.9),
        ("complaint", 2),
        ("unrecognized", 3),
        ("bounce", 7.1),  # older than the week: not counted
        ("reply", 30),
    ]:
        await add_report(db, account_id, kind, NOW - timedelta(days=days_ago))
    await add_report(db, other, "reply", NOW)  # another account's: not counted

    response = await client.get(
        f"/api/admin/accounts/{account_id}/health", headers=viewer["headers"]
    )

    assert response.status_code == 200, response.text
    mailbox = response.json()["mailbox"]
    polled = mailbox.pop("polled_at")
    position = {k: mailbox.pop(k) for k in ("folder", "uidvalidity", "last_uid", "last_error")}
    assert (mailbox.pop("history_id"), mailbox.pop("backoff_until")) == (None, None)
    if read:
        assert datetime.fromisoformat(polled) == polled_at
        assert position == {
            "folder": "INBOX",
            "uidvalidity": 7,
            "last_uid": 42,
            "last_error": "login failed",
        }
    else:
        assert polled is None
        assert set(position.values()) == {None}
    assert mailbox == {
        "reports": dict.fromkeys(KINDS, 0) | {"bounce": 3, "complaint": 1, "unrecognized": 1}
    }


@pytest.mark.parametrize("read", [False, True])
async def test_health_shows_how_a_gmail_api_mailbox_is_read(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn, read: bool
) -> None:
    account_id = await db.fetchval(
        "INSERT INTO accounts (name, kind, auth_kind, from_email, daily_limit)"
        " VALUES ('gmail', 'gmail-api', 'oauth2', 'news@example.com', 100) RETURNING id"
    )
    polled_at, backoff_until = NOW - timedelta(minutes=1), NOW + timedelta(seconds=40)
    if read:
        await db.execute(
            "INSERT INTO gmail_mailboxes (account_id, history_id, polled_at, last_error,"
            " backoff_until) VALUES ($1, '18446744073709551615', $2, 'quota', $3)",
            account_id,
            polled_at,
            backoff_until,
        )
    await add_report(db, account_id, "reply")

    response = await client.get(
        f"/api/admin/accounts/{account_id}/health", headers=viewer["headers"]
    )

    assert response.status_code == 200, response.text
    mailbox = response.json()["mailbox"]
    assert (mailbox["folder"], mailbox["uidvalidity"], mailbox["last_uid"]) == ("INBOX", None, None)
    assert mailbox["reports"]["reply"] == 1
    if read:
        assert mailbox["history_id"] == "18446744073709551615"  # beyond a signed bigint
        assert datetime.fromisoformat(mailbox["polled_at"]) == polled_at
        assert datetime.fromisoformat(mailbox["backoff_until"]) == backoff_until
        assert mailbox["last_error"] == "quota"
    else:
        assert (mailbox["history_id"], mailbox["polled_at"], mailbox["last_error"]) == (
            None,
            None,
            None,
        )


async def test_health_has_no_mailbox_block_for_an_account_without_imap(
    client: httpx.AsyncClient, viewer: dict[str, Any], db: Conn
) -> None:
    account_id = await add_account(db, imap=False)
    await add_report(db, account_id, "bounce")  # read before its IMAP settings were removed

    health = await client.get(f"/api/admin/accounts/{account_id}/health", headers=viewer["headers"])
    detail = await client.get(f"/api/admin/accounts/{account_id}", headers=viewer["headers"])

    assert health.status_code == 200, health.text
    assert health.json()["mailbox"] is None
    # Only the health route carries the block.
    assert "mailbox" not in detail.json()
