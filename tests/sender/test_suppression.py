"""Suppression is checked again when a message is claimed, right before it would be sent."""

from typing import Any
from uuid import UUID

from mailfleet_sender.settings import Settings

from tests.sender.conftest import (
    insert_account,
    insert_campaign,
    insert_messages,
    publish_batch,
    running_sender,
    skipped,
    statuses,
    wait_for,
)
from tests.smtp_peer import SmtpPeer


async def _suppress(
    db: Any, email: str, campaign: UUID | None = None, expires_in_s: float | None = None
) -> None:
    # Straight into the table, not through suppress_address(): that one also cancels the
    # queued messages itself, and here the sender must be the one that notices.
    await db.execute(
        """
        INSERT INTO suppressions (email, campaign_id, reason, expires_at)
        VALUES (lower($1), $2, 'test',
                CASE WHEN $3::float8 IS NULL THEN NULL
                     ELSE now() + make_interval(secs => $3::float8) END)
        """,
        email,
        campaign,
        expires_in_s,
    )


async def test_an_address_suppressed_while_its_command_waits_is_cancelled_not_sent(
    settings: Settings, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    account = await insert_account(db, smtp_peer.port)
    campaign = await insert_campaign(db)
    other_campaign = await insert_campaign(db)
    recipients = [
        "Global@Example.org",  # suppressed everywhere, in another case
        "scoped@example.org",  # suppressed for this campaign
        "elsewhere@example.org",  # suppressed for another campaign only
        "expired@example.org",  # suppressed until a minute ago
        "later@example.org",  # suppressed until an hour from now
        "fine@example.org",
    ]
    ids = await insert_messages(db, campaign, account, list(recipients))
    await publish_batch(rabbit_url, account, ids)  # no sender yet: the command waits
    await _suppress(db, "global@example.org")
    await _suppress(db, "scoped@example.org", campaign)
    await _suppress(db, "elsewhere@example.org", other_campaign)
    await _suppress(db, "expired@example.org", expires_in_s=-60)
    await _suppress(db, "later@example.org", expires_in_s=3600)
    before = skipped("suppressed")

    async def settled() -> bool:
        return "assigned" not in await statuses(db, ids)

    async with running_sender(settings):
        await wait_for(settled)
    assert await statuses(db, ids) == [
        "cancelled",
        "cancelled",
        "sent",
        "sent",
        "cancelled",
        "sent",
    ]
    assert sorted(r.recipient for r in smtp_peer.handler.received) == [
        "elsewhere@example.org",
        "expired@example.org",
        "fine@example.org",
    ]
    cancelled = await db.fetch(
        """
        SELECT last_error, account_id, attempts, message_id FROM messages
        WHERE id = ANY($1::bigint[]) AND status = 'cancelled'
        """,
        ids,
    )
    # Still holding the account: the dispatcher's sweep gives its reserved unit back.
    assert [tuple(row) for row in cancelled] == [("suppressed", account, 0, None)] * 3
    assert skipped("suppressed") - before == 3
