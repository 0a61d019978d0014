"""The group commit through a PostgreSQL outage: an outcome handed in while the database is
down is written once it is back, and the claim handed in with it is made then, not dropped.
"""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from mailfleet_common.db import create_pool
from mailfleet_common.messages import SendAttempt
from mailfleet_common.settings import PostgresSettings
from mailfleet_sender.claims import Claim, Committer, Outcome

from tests.private_servers import PrivatePostgres
from tests.sender.conftest import insert_account, insert_campaign, insert_messages

pytestmark = pytest.mark.slow


@pytest.fixture
async def postgres() -> AsyncIterator[PrivatePostgres]:
    async with PrivatePostgres() as server:
        yield server


async def test_an_outcome_handed_in_while_the_database_is_down_is_recorded_once_it_is_back(
    postgres: PrivatePostgres,
) -> None:
    dsn = await postgres.create_database("outage")
    db = await asyncpg.connect(dsn)
    try:
        account_id = await insert_account(db, 2525)
        campaign_id = await insert_campaign(db)
        sent_id, next_id = await insert_messages(
            db, campaign_id, account_id, ["a@example.org", "b@example.org"]
        )
        await db.execute(
            "UPDATE messages SET status = 'sending', attempts = 1 WHERE id = $1", sent_id
        )
    finally:
        await db.close()
    reported: list[SendAttempt] = []
    pool = await create_pool(PostgresSettings(dsn=dsn, pool_min=1, pool_max=2))
    committer = Committer(pool, "replica-a", reported.extend, linger_ms=0, max_group=10)
    committer.start()
    try:
        now = datetime.now(UTC)
        outcome = Outcome(
            sent_id, "sent", 250, None, None,
            SendAttempt.model_construct(
                message_id=sent_id, campaign_id=campaign_id, account_id=account_id, attempt=1,
                outcome="sent", smtp_code=250, detail="250 OK", attempted_at=now,
            ),
        )  # fmt: skip
        await postgres.stop()
        submitted = asyncio.create_task(
            committer.submit(outcome, Claim(next_id, account_id, "fleet.example.com"))
        )
        await asyncio.sleep(5.0)  # longer than the group commit used to hold an outcome (4 s)
        assert not submitted.done(), "the connection must wait, neither claim nor give up"
        await postgres.start()
        async with asyncio.timeout(10):
            claimed = await submitted
    finally:
        await committer.close()
        await pool.close()

    assert claimed is not None
    assert claimed.id == next_id
    assert [a.message_id for a in reported] == [sent_id]
    db = await asyncpg.connect(dsn)
    try:
        rows = {r["id"]: r["status"] for r in await db.fetch("SELECT id, status FROM messages")}
    finally:
        await db.close()
    assert rows == {sent_id: "sent", next_id: "sending"}
