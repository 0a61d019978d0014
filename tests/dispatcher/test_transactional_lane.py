"""The transactional lane: urgent notices, and notices again for messages left unclaimed."""

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import pytest
from mailfleet_dispatcher import assignment
from mailfleet_dispatcher.assignment import Assigner
from mailfleet_dispatcher.settings import Settings

from .conftest import Conn, RecordingPublisher, insert_account, insert_campaign, insert_messages


class RecordingUrgent:
    """Stands in for the bus's urgent notices."""

    def __init__(self) -> None:
        self.notices: list[dict[UUID, list[int]]] = []

    async def publish_urgent(self, assignments: Mapping[UUID, Sequence[int]]) -> None:
        self.notices.append({account: list(ids) for account, ids in assignments.items()})

    def times_noticed(self, message_id: int) -> int:
        return sum(message_id in ids for n in self.notices for ids in n.values())


async def test_unclaimed_transactional_messages_are_noticed_again_a_few_times(
    db: Conn,
    pool: Any,
    publisher: RecordingPublisher,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(assignment, "_RENOTICE_AFTER_S", 0.05)
    account = await insert_account(db)
    stream = await insert_campaign(db)
    await db.execute("UPDATE campaigns SET kind = 'transactional' WHERE id = $1", stream)
    claimed, missed = await insert_messages(db, stream, 2)
    await db.execute("UPDATE messages SET transactional = true WHERE campaign_id = $1", stream)
    urgent = RecordingUrgent()
    lane = Assigner(pool, publisher, settings.dispatcher, urgent=urgent)

    await lane.tick()
    assert urgent.notices == [{account: [claimed, missed]}]
    assert publisher.published == [(account, [claimed, missed])]
    # A sender took one on the notice; the other's notice went astray.
    await db.execute("UPDATE messages SET status = 'sending' WHERE id = $1", claimed)
    for _ in range(6):
        await asyncio.sleep(0.06)
        await lane.tick()

    assert urgent.times_noticed(claimed) == 1
    assert urgent.times_noticed(missed) == assignment._RENOTICES
    assert all(n == {account: [missed]} for n in urgent.notices[1:])
    # Commands are not repeated: the one published still stands.
    assert publisher.published == [(account, [claimed, missed])]
