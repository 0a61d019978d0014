"""Unsubscribing: the page, one-click POSTs, scopes, and the wait for messages being sent."""

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from mailfleet_common.tracking import TokenKind, TokenSigner, unsubscribe_path
from mailfleet_tracker.app import MAX_FORM_BYTES

from .conftest import (
    Db,
    HitsInbox,
    StartTracker,
    Tracker,
    insert_campaign,
    insert_messages,
    sample,
    sign,
)
from .proxy import TcpProxy

pytestmark = pytest.mark.rabbit

ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = {"content-type": "application/x-www-form-urlencoded"}


async def statuses(db: Db) -> dict[str, str]:
    rows = await db.fetch("SELECT email, status FROM messages ORDER BY id")
    return {f"{r['email']}": r["status"] for r in rows}


async def suppressions(db: Db) -> list[tuple[str, object, str, str]]:
    rows = await db.fetch("SELECT email, campaign_id, reason, source FROM suppressions ORDER BY id")
    return [(r["email"], r["campaign_id"], r["reason"], r["source"]) for r in rows]


async def a_recipient(
    db: Db, signer: TokenSigner, email: str = "leaving@example.org", scope: str = "global"
) -> tuple[int, str]:
    """A sent message in a new campaign, and the unsubscribe path of its recipient."""
    [message_id] = await insert_messages(db, await insert_campaign(db, scope=scope), [email])
    return message_id, unsubscribe_path(sign(signer, TokenKind.UNSUBSCRIBE, message_id))


async def test_the_page_asks_first_and_changes_nothing(
    tracker: Tracker, db: Db, signer: TokenSigner, inbox: HitsInbox
) -> None:
    campaign = await insert_campaign(db)
    [message_id, _] = await insert_messages(
        db, campaign, ["leaving@example.org", "later@example.org"], status="queued"
    )
    path = unsubscribe_path(sign(signer, TokenKind.UNSUBSCRIBE, message_id))

    page = await tracker.client.get(path)

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-store"
    html = page.text
    assert f'<form method="post" action="{path}">' in html
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in html
    assert "<script" not in html
    assert await suppressions(db) == []
    assert set((await statuses(db)).values()) == {"queued"}
    assert await inbox.nothing_more()


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
async def test_one_click_post_suppresses_everywhere_and_cancels_pending_messages(
    tracker: Tracker, db: Db, signer: TokenSigner, inbox: HitsInbox, encoding: str
) -> None:
    first = await insert_campaign(db)
    [message_id] = await insert_messages(db, first, ["Leaving@Example.org"])
    await insert_messages(db, first, ["staying@example.org"], status="queued")
    for status, email in [("queued", "leaving@example.org"), ("deferred", "LEAVING@example.org")]:
        await insert_messages(db, await insert_campaign(db), [email], status=status)
    path = unsubscribe_path(sign(signer, TokenKind.UNSUBSCRIBE, message_id))

    if encoding == "urlencoded":
        response = await tracker.client.post(path, content=ONE_CLICK, headers=FORM)
    else:
        response = await tracker.client.post(path, files={"List-Unsubscribe": (None, "One-Click")})

    assert response.status_code == 200, response.text
    assert "unsubscribed" in response.text
    assert await suppressions(db) == [
        ("leaving@example.org", None, "unsubscribed", f"tracker:message:{message_id}")
    ]
    rows = await db.fetch("SELECT email, campaign_id, status FROM messages ORDER BY id")
    assert [(r["email"], r["status"]) for r in rows] == [
        ("Leaving@Example.org", "sent"),
        ("staying@example.org", "queued"),
        ("leaving@example.org", "cancelled"),
        ("LEAVING@example.org", "cancelled"),
    ]
    [batch] = await inbox.receive(1)
    assert batch.kind == "unsubscribed"
    assert [h.message_id for h in batch.hits] == [message_id]


async def test_a_campaign_scoped_unsubscribe_leaves_other_campaigns_alone(
    tracker: Tracker, db: Db, signer: TokenSigner
) -> None:
    message_id, path = await a_recipient(db, signer, scope="campaign")
    scoped = await db.fetchval("SELECT campaign_id FROM messages WHERE id = $1", message_id)
    other = await insert_campaign(db)
    [elsewhere] = await insert_messages(db, other, ["leaving@example.org"], status="queued")

    response = await tracker.client.post(path, content=ONE_CLICK, headers=FORM)

    assert response.status_code == 200
    assert "this campaign" in response.text
    assert await suppressions(db) == [
        ("leaving@example.org", scoped, "unsubscribed", f"tracker:message:{message_id}")
    ]
    status = await db.fetchval("SELECT status FROM messages WHERE id = $1", elsewhere)
    assert status == "queued"


async def test_repeating_the_post_is_harmless(
    tracker: Tracker, db: Db, signer: TokenSigner
) -> None:
    _, path = await a_recipient(db, signer)

    for _ in range(3):
        response = await tracker.client.post(path, content=ONE_CLICK, headers=FORM)
        assert response.status_code == 200

    assert len(await suppressions(db)) == 1


async def test_the_answer_waits_until_a_message_being_sent_is_no_longer_sending(
    tracker: Tracker, db: Db, signer: TokenSigner
) -> None:
    _, path = await a_recipient(db, signer)
    other = await insert_campaign(db)
    [in_flight] = await insert_messages(db, other, ["LEAVING@example.org"], status="sending")

    started = time.monotonic()
    post = asyncio.create_task(tracker.client.post(path, content=ONE_CLICK, headers=FORM))
    await asyncio.sleep(0.5)
    assert not post.done(), "answered while a message to the address was still being sent"
    # The sender's SMTP transaction ends; its outcome is written.
    await db.execute("UPDATE messages SET status = 'sent' WHERE id = $1", in_flight)
    released_at = time.monotonic()
    response = await post

    assert response.status_code == 200
    assert time.monotonic() - started >= released_at - started >= 0.5
    assert len(await suppressions(db)) == 1


async def test_the_wait_gives_up_after_the_settle_time_and_still_answers(
    start_tracker: StartTracker, db: Db, signer: TokenSigner
) -> None:
    _, path = await a_recipient(db, signer)
    await insert_messages(db, await insert_campaign(db), ["leaving@example.org"], "sending")
    unsettled = sample("mailfleet_tracker_unsubscribe_unsettled_total")

    async with start_tracker(unsubscribe_settle_s=0.3) as tracker:
        response = await tracker.client.post(path, content=ONE_CLICK)

    assert response.status_code == 200
    assert sample("mailfleet_tracker_unsubscribe_unsettled_total") == unsettled + 1


async def test_unknown_messages_and_other_kinds_of_token_are_404(
    tracker: Tracker, db: Db, signer: TokenSigner
) -> None:
    campaign = await insert_campaign(db)
    [gone, kept] = await insert_messages(db, campaign, ["a@example.org", "b@example.org"])
    await db.execute("DELETE FROM messages WHERE id = $1", gone)

    missing = await tracker.client.post(
        unsubscribe_path(sign(signer, TokenKind.UNSUBSCRIBE, gone)), content=ONE_CLICK
    )
    wrong_kind = await tracker.client.post(
        unsubscribe_path(sign(signer, TokenKind.OPEN, kept)), content=ONE_CLICK
    )
    page = await tracker.client.get(unsubscribe_path(sign(signer, TokenKind.OPEN, kept)))

    assert (missing.status_code, wrong_kind.status_code, page.status_code) == (404, 404, 404)
    assert await suppressions(db) == []
    assert tracker.buffered == 0


async def test_a_body_beyond_a_few_kilobytes_is_413(
    tracker: Tracker, db: Db, signer: TokenSigner
) -> None:
    _, path = await a_recipient(db, signer)

    declared = await tracker.client.post(path, content=b"x" * (MAX_FORM_BYTES + 1), headers=FORM)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"y" * 1024

    streamed = await tracker.client.post(path, content=chunks())

    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert await suppressions(db) == []


async def test_database_unavailable_is_503_with_retry_after_and_unready(
    start_tracker: StartTracker, db: Db, database_dsn: str, signer: TokenSigner
) -> None:
    _, path = await a_recipient(db, signer)
    server = urlsplit(database_dsn)
    proxy = await TcpProxy(server.hostname or "127.0.0.1", server.port or 5432).start()
    through_proxy = urlunsplit(server._replace(netloc=f"{server.username}@127.0.0.1:{proxy.port}"))

    try:
        async with start_tracker(dsn=through_proxy) as tracker:
            await proxy.stop()
            response = await tracker.client.post(path, content=ONE_CLICK, headers=FORM)
            # Unready from the id refresher's next read on, about a second later.
            async with asyncio.timeout(5):
                ready = await tracker.client.get("/ready")
                while ready.status_code != 503:
                    await asyncio.sleep(0.1)
                    ready = await tracker.client.get("/ready")
    finally:
        await proxy.stop()

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert await suppressions(db) == []
