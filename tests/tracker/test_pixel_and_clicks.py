"""The open pixel and the click redirect: responses, headers, and the hits they publish."""

import time
from datetime import UTC, datetime, timedelta

import pytest
from mailfleet_common.tracking import TokenKind, TokenSigner, click_path, open_path, parse_keys
from mailfleet_tracker.app import GIF

from .conftest import (
    BROWSER,
    CLIENT_IP,
    Db,
    HitsInbox,
    StartTracker,
    Tracker,
    insert_campaign,
    insert_messages,
    sample,
    sign,
)

pytestmark = pytest.mark.rabbit

PRODUCT = "https://shop.example.com/p/42?utm_source=mail&q=caf%C3%A9&x=1#reviews"


async def sent_messages(db: Db, count: int = 1) -> list[int]:
    campaign = await insert_campaign(db)
    return await insert_messages(db, campaign, [f"r{i}@example.org" for i in range(count)])


async def test_open_pixel_is_an_uncacheable_gif_and_publishes_an_opened_hit(
    tracker: Tracker, db: Db, signer: TokenSigner, inbox: HitsInbox
) -> None:
    [message_id] = await sent_messages(db)
    before = datetime.now(UTC)

    response = await tracker.client.get(open_path(sign(signer, TokenKind.OPEN, message_id)))

    assert response.status_code == 200
    assert response.content == GIF
    assert len(GIF) == 43
    assert response.headers["content-type"] == "image/gif"
    assert response.headers["content-length"] == "43"
    assert response.headers["cache-control"] == "no-store, no-cache, must-revalidate, max-age=0"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["expires"] == "0"
    [batch] = await inbox.receive(1)
    assert batch.kind == "opened"
    [hit] = batch.hits
    assert hit.message_id == message_id
    assert hit.ip == CLIENT_IP
    assert hit.user_agent == BROWSER
    assert (hit.machine, hit.machine_reason, hit.url) == (False, None, None)
    assert before - timedelta(seconds=1) <= hit.occurred_at <= datetime.now(UTC)
    assert hit.key.startswith(tracker.app.runtime.publisher.instance_id + "-")


async def test_click_redirects_to_the_exact_original_url_and_publishes_a_clicked_hit(
    tracker: Tracker, db: Db, signer: TokenSigner, inbox: HitsInbox
) -> None:
    [message_id] = await sent_messages(db)

    response = await tracker.client.get(
        click_path(sign(signer, TokenKind.CLICK, message_id, PRODUCT))
    )

    assert response.status_code == 302
    assert response.headers["location"] == PRODUCT
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    [batch] = await inbox.receive(1)
    assert batch.kind == "clicked"
    assert [(h.message_id, h.url) for h in batch.hits] == [(message_id, PRODUCT)]


async def test_a_non_ascii_link_is_redirected_percent_encoded(
    tracker: Tracker, db: Db, signer: TokenSigner
) -> None:
    [message_id] = await sent_messages(db)
    url = "https://example.org/café?q=ü ö"

    response = await tracker.client.get(click_path(sign(signer, TokenKind.CLICK, message_id, url)))

    assert response.status_code == 302
    assert response.headers["location"] == "https://example.org/caf%C3%A9?q=%C3%BC%20%C3%B6"


async def test_hits_of_many_requests_arrive_batched_by_kind_with_unique_keys(
    tracker: Tracker, db: Db, signer: TokenSigner, inbox: HitsInbox
) -> None:
    ids = await sent_messages(db, 20)
    for message_id in ids:
        await tracker.client.get(open_path(sign(signer, TokenKind.OPEN, message_id)))
        await tracker.client.get(
            click_path(sign(signer, TokenKind.CLICK, message_id, "https://example.org/"))
        )

    batches = await inbox.receive(40)

    opened = [h for b in batches if b.kind == "opened" for h in b.hits]
    clicked = [h for b in batches if b.kind == "clicked" for h in b.hits]
    assert [h.message_id for h in opened] == ids
    assert [h.message_id for h in clicked] == ids
    assert len({h.key for h in opened + clicked}) == 40
    assert len(batches) < 40
    assert await inbox.nothing_more()


async def test_head_answers_like_get_but_records_nothing(
    tracker: Tracker, db: Db, signer: TokenSigner, inbox: HitsInbox
) -> None:
    [message_id] = await sent_messages(db)

    pixel = await tracker.client.head(open_path(sign(signer, TokenKind.OPEN, message_id)))
    click = await tracker.client.head(
        click_path(sign(signer, TokenKind.CLICK, message_id, PRODUCT))
    )

    assert (pixel.status_code, pixel.headers["content-type"]) == (200, "image/gif")
    assert pixel.content == b""
    assert (click.status_code, click.headers["location"]) == (302, PRODUCT)
    assert tracker.buffered == 0
    assert await inbox.nothing_more()


def _flip(token: str, at: int) -> str:
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]


async def test_bad_tokens_are_404_and_record_nothing(
    tracker: Tracker, db: Db, signer: TokenSigner, inbox: HitsInbox
) -> None:
    [message_id] = await sent_messages(db)
    click = sign(signer, TokenKind.CLICK, message_id, PRODUCT)
    opened = sign(signer, TokenKind.OPEN, message_id)
    foreign = TokenSigner(parse_keys("a-key-nobody-here-has-ever-configured-anywhere"))
    accepted_before = sample("mailfleet_tracker_hits_total", {"kind": "opened"})
    paths = [
        open_path("not-a-token"),  # forged
        open_path(opened[:-2]),  # truncated
        open_path(opened + "AAAA"),  # extended
        open_path(_flip(opened, 5)),  # one character changed
        click_path(_flip(click, len(click) // 2)),
        open_path(foreign.sign(TokenKind.OPEN, message_id, int(time.time()))),  # unknown key
        open_path(click),  # wrong kind
        click_path(opened),
        open_path(sign(signer, TokenKind.UNSUBSCRIBE, message_id)),
        open_path(sign(signer, TokenKind.OPEN, 10**12)),  # a message id never issued
        click_path(sign(signer, TokenKind.CLICK, 10**12, PRODUCT)),
        open_path(sign(signer, TokenKind.OPEN, 0)),
        "/track/open/",
        "/track/open/%00%ff",
        f"/track/open/{opened}/",
        "/track/opens",
        "/",
    ]

    for path in paths:
        response = await tracker.client.get(path)
        assert response.status_code == 404, path
        assert "location" not in response.headers

    assert tracker.buffered == 0
    assert sample("mailfleet_tracker_hits_total", {"kind": "opened"}) == accepted_before
    assert await inbox.nothing_more()


async def test_a_message_id_issued_after_startup_is_accepted_at_once(
    tracker: Tracker, db: Db, signer: TokenSigner
) -> None:
    [message_id] = await sent_messages(db)
    # As if the message was inserted just after the last background read.
    tracker.app.runtime.ids.highest = message_id - 1

    response = await tracker.client.get(open_path(sign(signer, TokenKind.OPEN, message_id)))

    assert response.status_code == 200
    assert tracker.app.runtime.ids.highest >= message_id


async def test_wrong_methods_are_405_with_allow(
    tracker: Tracker, db: Db, signer: TokenSigner
) -> None:
    [message_id] = await sent_messages(db)
    opened = open_path(sign(signer, TokenKind.OPEN, message_id))
    unsubscribe = f"/unsubscribe/{sign(signer, TokenKind.UNSUBSCRIBE, message_id)}"

    post = await tracker.client.post(opened)
    delete = await tracker.client.delete(unsubscribe)

    assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")
    assert (delete.status_code, delete.headers["allow"]) == (405, "GET, HEAD, POST")
    assert tracker.buffered == 0


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://example.com/a", True),
        ("https://www.example.com/a?b=c", True),
        ("http://deep.sub.example.com:8080/", True),
        ("https://WWW.EXAMPLE.COM/", True),
        ("https://example.com./", True),
        ("https://notexample.com/", False),
        ("https://example.com.evil.test/", False),
        ("https://evil.test/?next=https://example.com/", False),
        ("https://example.com@evil.test/", False),
        ("https://evil.test\\@example.com/", False),
        ("javascript:alert(1)//example.com", False),
        ("ftp://example.com/file", False),
        ("//example.com/", False),
    ],
)
async def test_clicks_go_only_to_allowed_domains(
    start_tracker: StartTracker, db: Db, signer: TokenSigner, url: str, allowed: bool
) -> None:
    [message_id] = await sent_messages(db)
    clicks_before = sample("mailfleet_tracker_hits_total", {"kind": "clicked"})
    async with start_tracker(allowed_domains="example.com, Example.NET") as tracker:
        response = await tracker.client.get(
            click_path(sign(signer, TokenKind.CLICK, message_id, url))
        )

    if allowed:
        assert (response.status_code, response.headers["location"]) == (302, url)
    else:
        assert response.status_code == 404
    clicks = sample("mailfleet_tracker_hits_total", {"kind": "clicked"}) - clicks_before
    assert clicks == (1 if allowed else 0)


async def test_without_allowed_domains_any_http_host_is_a_target(
    tracker: Tracker, db: Db, signer: TokenSigner
) -> None:
    [message_id] = await sent_messages(db)
    for url in ("https://anything.test/x", "http://10.0.0.1/"):
        response = await tracker.client.get(
            click_path(sign(signer, TokenKind.CLICK, message_id, url))
        )
        assert (response.status_code, response.headers["location"]) == (302, url)
    response = await tracker.client.get(
        click_path(sign(signer, TokenKind.CLICK, message_id, "mailto:a@example.com"))
    )
    assert response.status_code == 404


async def test_a_scanner_or_an_early_fetch_is_published_flagged_as_a_machine(
    tracker: Tracker, db: Db, signer: TokenSigner, inbox: HitsInbox
) -> None:
    [message_id] = await sent_messages(db)
    late = sign(signer, TokenKind.OPEN, message_id)
    just_sent = signer.sign(TokenKind.OPEN, message_id, int(time.time()))

    await tracker.client.get(
        open_path(late), headers={"user-agent": "Mozilla/5.0 (via ggpht.com GoogleImageProxy)"}
    )
    await tracker.client.get(open_path(just_sent))
    await tracker.client.get(open_path(late))

    hits = [h for batch in await inbox.receive(3) for h in batch.hits]
    assert [(h.machine, h.machine_reason) for h in hits] == [
        (True, "google-image-proxy"),
        (True, "too-soon-after-send"),
        (False, None),
    ]


async def test_forwarded_for_is_used_only_when_trusted(
    start_tracker: StartTracker, db: Db, signer: TokenSigner, inbox: HitsInbox
) -> None:
    [message_id] = await sent_messages(db)
    forwarded = {"x-forwarded-for": "198.51.100.9, 10.0.0.1"}
    for trusted in (False, True):
        async with start_tracker(trust_forwarded_for=trusted) as tracker:
            await tracker.client.get(
                open_path(sign(signer, TokenKind.OPEN, message_id)), headers=forwarded
            )
            await tracker.client.get(
                open_path(sign(signer, TokenKind.OPEN, message_id)),
                headers={"x-forwarded-for": "not an address"},
            )

    hits = [h for batch in await inbox.receive(4) for h in batch.hits]
    assert [h.ip for h in hits] == [CLIENT_IP, CLIENT_IP, "198.51.100.9", CLIENT_IP]


async def test_ops_endpoints_answer(tracker: Tracker) -> None:
    health = await tracker.client.get("/health")
    ready = await tracker.client.get("/ready")
    metrics = await tracker.client.get("/metrics")

    assert (health.status_code, ready.status_code, metrics.status_code) == (200, 200, 200)
    for name in (
        'mailfleet_tracker_requests_total{result="ok",route="open"}',
        "mailfleet_tracker_hits_buffered",
        'mailfleet_tracker_hits_published_total{kind="opened"}',
        "mailfleet_tracker_publish_failures_total",
        "mailfleet_tracker_events_dropped_total",
        "mailfleet_tracker_broker_connected",
    ):
        assert name in metrics.text
