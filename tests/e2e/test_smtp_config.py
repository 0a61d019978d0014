"""An account's SMTP configuration error, met through the real processes: no message burned."""

from contextlib import aclosing
from typing import Any

import asyncpg
import pytest

from tests.e2e.conftest import campaign_counts, create_account, start_campaign, wait_until
from tests.smtp_peer import SmtpPeer
from tests.stack import Stack

pytestmark = pytest.mark.slow


async def test_credentials_for_a_server_without_auth_pause_the_account_until_removed(
    stack: Stack, db: "asyncpg.Connection[asyncpg.Record]"
) -> None:
    peer = SmtpPeer(auth=False).start()
    try:
        await stack.start_api()
        await stack.start_dispatcher()
        await stack.start_sender()
        async with aclosing(await stack.admin_client()) as client:
            account = await create_account(client, "noauth", peer.port)
            emails = [f"n{i}@example.org" for i in range(50)]
            campaign_id = await start_campaign(client, [account["id"]], emails)

            async def state() -> dict[str, Any]:
                reply = await client.get(f"/api/admin/accounts/{account['id']}")
                result: dict[str, Any] = reply.json()
                return result

            async def paused_and_requeued() -> bool:
                counts = await campaign_counts(client, campaign_id)
                return (await state())["status"] == "paused" and counts.get("queued") == 50

            await wait_until(paused_and_requeued, 30, "the account paused, its messages queued")
            assert "does not offer AUTH" in (await state())["status_reason"]
            assert await db.fetchval("SELECT max(attempts) FROM messages") == 0
            assert peer.handler.ehlos == 1  # one connection, not one per message
            assert peer.handler.received == []
            paused_events = await db.fetchval(
                "SELECT count(*) FROM events WHERE type = 'account-paused' AND account_id = $1",
                account["id"],
            )
            assert paused_events == 1

            response = await client.patch(
                f"/api/admin/accounts/{account['id']}",
                json={"smtp_username": None, "smtp_password": None, "status": "active"},
            )
            assert response.status_code == 200, response.text

            async def all_sent() -> bool:
                return (await campaign_counts(client, campaign_id)).get("sent", 0) == 50

            await wait_until(all_sent, 60, "every message sent once the credentials are gone")
    finally:
        peer.stop()

    assert sorted(r.recipient for r in peer.handler.received) == sorted(emails)
    assert await db.fetchval("SELECT max(attempts) FROM messages") == 1
