"""The tracker as deployed: the console script under uvicorn, uvloop and httptools."""

import json

import httpx
import pytest
from mailfleet_common.tracking import TokenKind, TokenSigner, click_path, open_path

from tests.stack import Stack, StackError

from .conftest import BROWSER, Db, HitsInbox, insert_campaign, insert_messages, sign

pytestmark = pytest.mark.rabbit


async def test_served_by_the_console_script_it_flushes_its_hits_on_sigterm_and_exits_0(
    db: Db,
    database_dsn: str,
    rabbit_url: str,
    crypto_keys: str,
    tracking_keys: str,
    signer: TokenSigner,
    inbox: HitsInbox,
) -> None:
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, ["a@example.org", "b@example.org"])
    # A linger far longer than the test: only the shutdown flush can publish these hits.
    env = {"MAILFLEET_TRACKER__LINGER_MS": "600000"}
    async with Stack(
        postgres_dsn=database_dsn,
        rabbit_url=rabbit_url,
        crypto_keys=crypto_keys,
        tracking_keys=tracking_keys,
        env=env,
    ) as stack:
        tracker = await stack.start_tracker()
        async with httpx.AsyncClient(base_url=tracker.url, headers={"user-agent": BROWSER}) as c:
            pixel = await c.get(open_path(sign(signer, TokenKind.OPEN, ids[0])))
            click = await c.get(
                click_path(sign(signer, TokenKind.CLICK, ids[1], "https://example.org/?a=1&b=2"))
            )
            missing = await c.get("/track/open/nothing")
        assert await inbox.nothing_more(0.3)

        exit_code = await tracker.stop()

    assert (pixel.status_code, pixel.headers["content-length"]) == (200, "43")
    assert (click.status_code, click.headers["location"]) == (302, "https://example.org/?a=1&b=2")
    assert missing.status_code == 404
    assert exit_code == 0
    batches = await inbox.receive(2)
    assert sorted((b.kind, h.message_id) for b in batches for h in b.hits) == [
        ("clicked", ids[1]),
        ("opened", ids[0]),
    ]
    lines = tracker.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines if not line.startswith("--- ")]
    assert records, "the tracker logged nothing"
    assert {r["service"] for r in records} == {"mailfleet-tracker"}
    assert "tracker started" in {r["message"] for r in records}


async def test_without_tracking_keys_the_process_exits_saying_why(
    database_dsn: str, rabbit_url: str, crypto_keys: str
) -> None:
    async with Stack(
        postgres_dsn=database_dsn,
        rabbit_url=rabbit_url,
        crypto_keys=crypto_keys,
        env={"MAILFLEET_TRACKING__KEYS": ""},
    ) as stack:
        with pytest.raises(StackError, match="MAILFLEET_TRACKING__KEYS"):
            await stack.start_tracker()
