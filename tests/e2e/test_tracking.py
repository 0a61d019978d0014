"""Opens, clicks and unsubscribes through the real tracker, sender, dispatcher and API."""

import asyncio
import json
import subprocess
import time
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from mailfleet_common.tracking import TokenKind, TokenSigner, click_path, open_path, parse_keys

from tests.e2e.conftest import Fleet, campaign_counts, create_account, start_campaign, wait_until
from tests.stack import Sink, Stack

pytestmark = pytest.mark.slow

Db = "asyncpg.Connection[asyncpg.Record]"
# A desktop mail client: its opens and clicks are human ones.
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}
# Opens right after delivery are not taken for a link scanner in these tests.
HUMAN_WINDOW = {"MAILFLEET_TRACKER__MACHINE_WINDOW_S": "0"}


class _Links(HTMLParser):
    """Every href and img src of an HTML document, read with the standard library's parser."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a" and found.get("href"):
            self.hrefs.append(found["href"] or "")
        if tag == "img" and found.get("src"):
            self.images.append(found["src"] or "")


def links_of(html: str) -> _Links:
    parser = _Links()
    parser.feed(html)
    return parser


def delivered(sink: Sink) -> dict[str, list[EmailMessage]]:
    """The messages in the sink's maildir, by recipient address."""
    assert sink.maildir is not None
    found: dict[str, list[EmailMessage]] = {}
    for path in sorted((sink.maildir / "new").iterdir()):
        message = BytesParser(policy=default).parsebytes(path.read_bytes())
        assert isinstance(message, EmailMessage)
        found.setdefault(message["To"].addresses[0].addr_spec.lower(), []).append(message)
    return found


def part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    assert body is not None, f"no text/{subtype} part"
    content: str = body.get_content()
    return content


async def wait_delivered(sink: Sink, address: str, within_s: float = 30) -> EmailMessage:
    async def arrived() -> bool:
        return address in delivered(sink)

    await wait_until(arrived, within_s, f"a message to {address}")
    return delivered(sink)[address][0]


async def tracking_events(db: Any, message_id: int | None = None) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT type, message_id, data FROM events "
        "WHERE type IN ('opened', 'clicked', 'unsubscribed') "
        "AND ($1::bigint IS NULL OR message_id = $1) ORDER BY id",
        message_id,
    )
    # The test connection has no JSON codec: `data` arrives as text.
    return [{**row, "data": json.loads(row["data"])} for row in rows]


async def wait_events(db: Any, count: int, message_id: int | None = None) -> list[dict[str, Any]]:
    async def recorded() -> bool:
        return len(await tracking_events(db, message_id)) >= count

    await wait_until(recorded, 30, f"{count} tracking events recorded")
    await asyncio.sleep(1.0)  # anything extra would have been recorded by now
    return await tracking_events(db, message_id)


async def seed_sent_messages(db: Any, count: int) -> list[int]:
    """A running campaign with `count` messages already sent, straight into the database."""
    owner = await db.fetchval(
        "INSERT INTO users (email, password_hash, role) VALUES ($1, 'x', 'viewer') RETURNING id",
        f"owner-{time.monotonic_ns()}@example.com",
    )
    campaign = await db.fetchval(
        "INSERT INTO campaigns (owner_id, name, subject, status) "
        "VALUES ($1, 'seeded', 's', 'running') RETURNING id",
        owner,
    )
    rows = await db.fetch(
        "INSERT INTO messages (campaign_id, email, status, attempts, sent_at) "
        "SELECT $1, 'seeded' || n || '@example.org', 'sent', 1, now() "
        "FROM generate_series(1, $2) AS n RETURNING id",
        campaign,
        count,
    )
    return [row["id"] for row in rows]


async def test_links_and_pixel_of_a_delivered_message_produce_exactly_the_expected_events(
    fleet: Fleet, db: Db
) -> None:
    stack, sink, client = fleet.stack, fleet.sink, fleet.client
    tracker = await stack.start_tracker(HUMAN_WINDOW)
    account = await create_account(client, "acct", sink.port)
    item = "https://shop.example.com/item?id=42&ref=mail&q=caf%C3%A9#top"
    html = (
        "<p>Hi {{ name }}</p>"
        '<p><a href="https://shop.example.com/item?id=42&amp;ref=mail&amp;q=caf%C3%A9#top">'
        "Item</a> <a href='https://example.org/blog'>Blog</a>"
        ' <a href="mailto:help@example.com">Mail us</a> <a href="tel:+15550100">Call</a>'
        ' <a href="#top">Top</a>'
        ' <a data-mf-notrack href="https://example.org/private">Private</a></p>'
    )
    text = f"Hi {{{{ name }}}}. The item: {item}\n"
    campaign_id = await start_campaign(
        client, [account["id"]], ["reader@example.org"], html_body=html, text_body=text
    )
    message = await wait_delivered(sink, "reader@example.org")
    message_id = await db.fetchval("SELECT id FROM messages WHERE campaign_id = $1", campaign_id)

    found = links_of(part(message, "html"))
    click_base = f"{tracker.url}/track/click/"
    tracked = [href for href in found.hrefs if href.startswith(click_base)]
    untouched = [href for href in found.hrefs if not href.startswith(tracker.url)]
    assert len(tracked) == 2
    assert untouched == [
        "mailto:help@example.com",
        "tel:+15550100",
        "#top",
        "https://example.org/private",
    ]
    pixels = [src for src in found.images if src.startswith(f"{tracker.url}/track/open/")]
    assert len(pixels) == 1
    text_clicks = [word for word in part(message, "plain").split() if word.startswith(click_base)]
    assert len(text_clicks) == 1

    async with httpx.AsyncClient(headers=BROWSER, follow_redirects=False) as browser:
        targets = []
        for url in [*tracked, *text_clicks]:
            response = await browser.get(url)
            assert response.status_code == 302, response.text
            targets.append(response.headers["location"])
        assert targets == [item, "https://example.org/blog", item]
        pixel = await browser.get(pixels[0])
        assert pixel.status_code == 200
        assert pixel.headers["content-type"] == "image/gif"
        assert "no-cache" in pixel.headers["cache-control"]

    events = await wait_events(db, 4, message_id)
    assert sorted(e["type"] for e in events) == ["clicked", "clicked", "clicked", "opened"]
    clicked = [e["data"]["url"] for e in events if e["type"] == "clicked"]
    assert sorted(clicked) == sorted(targets)
    assert not any(e["data"]["machine"] for e in events)
    assert all(e["data"]["user_agent"] == BROWSER["User-Agent"] for e in events)

    detail = (await client.get(f"/api/campaigns/{campaign_id}")).json()
    engagement = detail["engagement"]
    assert engagement["sent"] == 1
    assert (engagement["opens"], engagement["unique_opens"]) == (1, 1)
    assert (engagement["clicks"], engagement["unique_clicks"]) == (3, 1)
    assert engagement["open_rate"] == engagement["click_rate"] == 1.0
    assert engagement["unsubscribes"] == 0


async def test_a_scanner_fetching_everything_at_once_is_recorded_but_flagged(
    fleet: Fleet, db: Db
) -> None:
    stack, sink, client = fleet.stack, fleet.sink, fleet.client
    tracker = await stack.start_tracker()  # the default window: seconds after delivery
    account = await create_account(client, "acct", sink.port)
    html = '<p><a href="https://example.org/a">A</a></p>'
    campaign_id = await start_campaign(
        client, [account["id"]], ["scanned@example.org"], html_body=html, text_body=None
    )
    message = await wait_delivered(sink, "scanned@example.org")
    found = links_of(part(message, "html"))
    async with httpx.AsyncClient(headers=BROWSER) as scanner:
        for url in [*found.hrefs, *found.images]:
            if url.startswith(tracker.url + "/track/"):
                assert (await scanner.get(url)).status_code in (200, 302)
    events = await wait_events(db, 2)
    assert all(e["data"]["machine"] for e in events)
    engagement = (await client.get(f"/api/campaigns/{campaign_id}")).json()["engagement"]
    assert (engagement["unique_opens"], engagement["unique_human_opens"]) == (1, 0)
    assert (engagement["unique_clicks"], engagement["unique_human_clicks"]) == (1, 0)


async def test_forged_tampered_and_foreign_tokens_get_404_and_record_nothing(
    stack: Stack, db: Db
) -> None:
    await stack.start_dispatcher()
    tracker = await stack.start_tracker(
        {**HUMAN_WINDOW, "MAILFLEET_TRACKER__ALLOWED_DOMAINS": "example.com"}
    )
    [message_id, sentinel_id] = await seed_sent_messages(db, 2)
    signer = TokenSigner(parse_keys(stack.tracking_keys))
    foreign = TokenSigner(parse_keys("another-key-that-is-long-enough-for-hmac"))
    issued = int(time.time()) - 600
    good_click = signer.sign(TokenKind.CLICK, message_id, issued, "https://www.example.com/a?b=c")
    good_open = signer.sign(TokenKind.OPEN, message_id, issued)
    flipped = good_click[:20] + ("A" if good_click[20] != "A" else "B") + good_click[21:]
    bad_paths = [
        click_path(flipped),  # the URL or message id changed under the signature
        click_path(good_click[:-3]),  # truncated
        click_path(good_click + "AAAA"),  # extended
        open_path(good_open[:-1] + ("A" if good_open[-1] != "A" else "Q")),
        open_path(foreign.sign(TokenKind.OPEN, message_id, issued)),  # not our key
        open_path(signer.sign(TokenKind.OPEN, 10**12, issued)),  # a message never sent
        click_path(signer.sign(TokenKind.CLICK, 10**12, issued, "https://example.com/")),
        # Signed, but its host is outside the allowed domains.
        click_path(signer.sign(TokenKind.CLICK, message_id, issued, "https://evil.test/")),
        click_path(good_open),  # an open token where a click is expected
        open_path(good_click),
        "/unsubscribe/" + good_open,
        "/track/open/",
        "/track/open/%00%ff",
    ]
    async with httpx.AsyncClient(base_url=tracker.url, headers=BROWSER) as browser:
        for path in bad_paths:
            response = await browser.get(path)
            assert response.status_code == 404, (path, response.status_code)
            assert "location" not in response.headers
        response = await browser.post("/unsubscribe/" + good_open)
        assert response.status_code == 404
        # The genuine click still works, and a sentinel open shows when recording caught up.
        response = await browser.get(click_path(good_click), follow_redirects=False)
        assert response.headers["location"] == "https://www.example.com/a?b=c"
        sentinel = await browser.get(open_path(signer.sign(TokenKind.OPEN, sentinel_id, issued)))
        assert sentinel.status_code == 200

    events = await wait_events(db, 2)
    assert sorted((e["type"], e["message_id"]) for e in events) == [
        ("clicked", message_id),
        ("opened", sentinel_id),
    ]
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_one_click_unsubscribe_as_a_mail_client_sends_it(fleet: Fleet, db: Db) -> None:
    stack, sink, client = fleet.stack, fleet.sink, fleet.client
    tracker = await stack.start_tracker(HUMAN_WINDOW)
    account = await create_account(client, "acct", sink.port)
    campaign_id = await start_campaign(client, [account["id"]], ["leaving@example.org"])
    message = await wait_delivered(sink, "leaving@example.org")

    # The headers as a mail client reads them (RFC 2369, RFC 8058).
    uris = [u.strip().strip("<>") for u in str(message["List-Unsubscribe"]).split(",")]
    https = [u for u in uris if u.startswith(f"{tracker.url}/unsubscribe/")]
    mailto = [u for u in uris if u.startswith("mailto:")]
    assert len(https) == 1
    assert len(mailto) == 1
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert https[0] in part(message, "html")
    assert https[0] in part(message, "plain")
    # DKIM-friendly: each header appears once.
    assert len(message.get_all("List-Unsubscribe") or []) == 1

    async with httpx.AsyncClient() as mail_client:
        page = await mail_client.get(https[0])
        assert page.status_code == 200
        assert await db.fetchval("SELECT count(*) FROM suppressions") == 0  # GET changes nothing
        # What a one-click capable client sends: a POST with this exact body, no cookies.
        response = await mail_client.post(
            https[0],
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200, response.text
    suppressed = await db.fetchrow("SELECT email, campaign_id, reason FROM suppressions")
    assert dict(suppressed) == {
        "email": "leaving@example.org",
        "campaign_id": None,
        "reason": "unsubscribed",
    }
    events = await wait_events(db, 1)
    assert [e["type"] for e in events] == ["unsubscribed"]
    engagement = (await client.get(f"/api/campaigns/{campaign_id}")).json()["engagement"]
    assert engagement["unsubscribes"] == 1
    assert engagement["unsubscribe_rate"] == 1.0

    # A later campaign reports the address as rejected.
    response = await client.post(
        "/api/campaigns", json={"name": "next", "subject": "s", "text_body": "t"}
    )
    next_campaign = response.json()["id"]
    response = await client.post(
        "/api/queue/enqueue",
        json={
            "campaign_id": next_campaign,
            "recipients": [{"email": "Leaving@Example.org"}, {"email": "staying@example.org"}],
        },
    )
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1
    assert [(r["email"].lower(), r["reason"]) for r in response.json()["rejected"]] == [
        ("leaving@example.org", "suppressed")
    ]


async def test_unsubscribe_mid_run_stops_every_later_message_to_that_address(
    fleet: Fleet, db: Db
) -> None:
    stack, sink, client = fleet.stack, fleet.sink, fleet.client
    tracker = await stack.start_tracker(HUMAN_WINDOW)
    # Paced accounts keep three campaigns running for several seconds, with the address in
    # every one of them: queued, assigned to an account queue, or being sent when it leaves.
    accounts = [
        await create_account(client, f"acct{i}", sink.port, min_gap_ms=15) for i in range(2)
    ]
    target = "target@example.org"
    campaigns = []
    for number, position in enumerate((5, 150, 290)):
        emails = [f"c{number}-r{i}@example.org" for i in range(300)]
        emails.insert(position, target)
        campaigns.append(await start_campaign(client, [a["id"] for a in accounts], emails))

    first = await wait_delivered(sink, target)
    uris = [u.strip().strip("<>") for u in str(first["List-Unsubscribe"]).split(",")]
    [https] = [u for u in uris if u.startswith(tracker.url)]
    async with httpx.AsyncClient() as mail_client:
        response = await mail_client.post(https, content=b"List-Unsubscribe=One-Click")
    returned_at = time.time()
    assert response.status_code == 200, response.text

    async def finished() -> bool:
        for campaign_id in campaigns:
            counts = await campaign_counts(client, campaign_id)
            if counts.get("sent", 0) + counts.get("cancelled", 0) < 301:
                return False
        return True

    await wait_until(finished, 90, "every campaign finished")
    await asyncio.sleep(1.0)  # the sink writes its records twice a second
    to_target = [r for r in sink.records() if target in r["recipients"]]
    assert to_target, "the first message reached the server"
    late = [r for r in to_target if r["at"] > returned_at]
    assert late == [], f"{len(late)} message(s) reached the server after the unsubscribe"
    statuses = await db.fetch(
        "SELECT status, last_error FROM messages WHERE lower(email) = $1", target
    )
    sent = [r for r in statuses if r["status"] == "sent"]
    cancelled = [r for r in statuses if r["status"] == "cancelled"]
    assert len(sent) == len(to_target)
    assert len(sent) + len(cancelled) == 3
    assert cancelled, "the later campaigns' messages to the address were cancelled"
    assert all("suppressed" in (r["last_error"] or "") for r in cancelled)
    # Everyone else still got their message, once.
    delivered_to = [rcpt for r in sink.records() for rcpt in r["recipients"] if rcpt != target]
    assert len(delivered_to) == len(set(delivered_to)) == 900


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.rabbit
async def test_tracker_keeps_answering_while_rabbitmq_restarts_and_every_event_arrives(
    stack: Stack, db: Db
) -> None:
    await stack.start_dispatcher()
    tracker = await stack.start_tracker(HUMAN_WINDOW)
    ids = await seed_sent_messages(db, 300)
    signer = TokenSigner(parse_keys(stack.tracking_keys))
    issued = int(time.time()) - 600
    paths = [open_path(signer.sign(TokenKind.OPEN, i, issued)) for i in ids]
    async with httpx.AsyncClient(base_url=tracker.url, headers=BROWSER, timeout=5) as browser:

        async def hit(batch: list[str]) -> None:
            for path in batch:
                started = time.monotonic()
                response = await browser.get(path)
                assert response.status_code == 200
                assert time.monotonic() - started < 1.0, "the tracker stalled"

        await hit(paths[:100])
        stopping = asyncio.create_task(asyncio.to_thread(_rabbitmqctl, "stop_app"))
        try:
            await hit(paths[100:150])
            await stopping
            await hit(paths[150:250])  # the broker is down
            metrics = (await browser.get("/metrics")).text
            assert "mailfleet_tracker" in metrics
        finally:
            await asyncio.to_thread(_rabbitmqctl, "start_app")
            await asyncio.to_thread(_rabbitmqctl, "await_startup")
        await hit(paths[250:])

    async def all_recorded() -> bool:
        count = await db.fetchval(
            "SELECT count(DISTINCT message_id) FROM events WHERE type = 'opened'"
        )
        return int(count) == len(ids)

    await wait_until(all_recorded, 90, "every open recorded after the restart", every_s=0.5)
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'opened'") == len(ids)
