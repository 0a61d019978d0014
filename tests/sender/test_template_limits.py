"""A template over the render limits fails its messages with the reason and stalls nothing."""

import time
from typing import Any

from mailfleet_sender.replica import SenderReplica

from tests.sender.conftest import (
    insert_account,
    insert_campaign,
    insert_messages,
    publish_batch,
    settled,
    wait_for,
)
from tests.smtp_peer import SmtpPeer

NESTED_LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"


async def _last_error(db: Any, message_id: int) -> str:
    error: str = await db.fetchval("SELECT last_error FROM messages WHERE id = $1", message_id)
    return error


async def test_a_template_over_the_operation_budget_fails_its_messages_quickly(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    account = await insert_account(db, smtp_peer.port)
    heavy = await insert_campaign(db, subject=NESTED_LOOP)
    light = await insert_campaign(db, subject="Hello {{ name }}")
    heavy_ids = await insert_messages(
        db, heavy, account, [f"h{i}@example.org" for i in range(20)], {}
    )
    light_ids = await insert_messages(db, light, account, ["fine@example.org"], {})

    started = time.perf_counter()
    await publish_batch(rabbit_url, account, heavy_ids + light_ids)
    await wait_for(lambda: settled(db, heavy_ids, "failed"))
    await wait_for(lambda: settled(db, light_ids, "sent"))

    # The campaign is refused once when it is compiled, not rendered twenty times.
    assert time.perf_counter() - started < 5
    for message_id in heavy_ids:
        assert "operations" in await _last_error(db, message_id)
    assert smtp_peer.handler.to("fine@example.org")
    assert not [r for r in smtp_peer.handler.received if r.recipient.startswith("h")]


async def test_a_template_over_the_size_bound_for_a_recipient_fails_that_message(
    sender: SenderReplica, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    account = await insert_account(db, smtp_peer.port)
    campaign = await insert_campaign(db, subject="{{ 'x' * (width | int) }}")
    huge = await insert_messages(db, campaign, account, ["huge@example.org"], {"width": 10**8})
    small = await insert_messages(db, campaign, account, ["small@example.org"], {"width": 3})

    await publish_batch(rabbit_url, account, huge + small)
    await wait_for(lambda: settled(db, huge, "failed"))
    await wait_for(lambda: settled(db, small, "sent"))

    assert "more than 1000000 characters" in await _last_error(db, huge[0])
    assert smtp_peer.handler.to("small@example.org")[0].message["Subject"] == "xxx"
