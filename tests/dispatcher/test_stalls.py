"""The stall watch: lost send commands are issued again, but not those a busy replica holds."""

import asyncio
from typing import Any

from faststream.rabbit import RabbitBroker
from mailfleet_common import topology
from mailfleet_common.messages import SendBatch
from mailfleet_dispatcher.assignment import Assigner
from mailfleet_dispatcher.bus import Bus
from mailfleet_dispatcher.settings import Settings
from mailfleet_dispatcher.stalls import StallWatch

from .conftest import (
    Conn,
    RecordingPublisher,
    insert_account,
    insert_campaign,
    insert_messages,
    next_body,
)

STALL_S = 0.3


async def test_a_command_waiting_at_a_busy_replica_is_not_issued_again_until_its_lag_passes(
    db: Conn, pool: Any, broker: RabbitBroker, publisher: RecordingPublisher, settings: Settings
) -> None:
    account = await insert_account(db)
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, 4)
    # Assigned, but the commands never reach the bus: from here they look lost.
    await Assigner(pool, publisher, settings.dispatcher).tick()
    # A live replica reports that its commands wait 2 s before it starts them.
    await db.execute("INSERT INTO sender_replicas (id, command_lag_ms) VALUES ('busy', 2000)")
    dispatch = settings.dispatcher.model_copy(update={"stall_s": STALL_S})
    bus = Bus(broker, dispatch.batch_size)
    await bus.declare_topology()
    watch = StallWatch(pool, bus, dispatch, settings.replicas.timeout_s)

    assert await watch.check() == 0  # the account's front is seen for the first time
    await asyncio.sleep(STALL_S + 0.5)
    # Past stall_s, but within twice the replica's lag: the command may be in its hands.
    assert await watch.check() == 0

    await db.execute("UPDATE sender_replicas SET command_lag_ms = 0, heartbeat_at = now()")
    assert await watch.check() == 4

    queue = await broker.declare_queue(topology.send_queue(account))
    command = SendBatch.model_validate_json(await next_body(queue))
    assert command.message_ids == ids


async def test_the_lag_of_a_replica_that_stopped_beating_is_not_waited_for(
    db: Conn, pool: Any, broker: RabbitBroker, publisher: RecordingPublisher, settings: Settings
) -> None:
    await insert_account(db)
    campaign = await insert_campaign(db)
    await insert_messages(db, campaign, 2)
    await Assigner(pool, publisher, settings.dispatcher).tick()
    await db.execute(
        "INSERT INTO sender_replicas (id, command_lag_ms, heartbeat_at)"
        " VALUES ('gone', 60000, now() - interval '1 hour')"
    )
    dispatch = settings.dispatcher.model_copy(update={"stall_s": STALL_S})
    bus = Bus(broker, dispatch.batch_size)
    await bus.declare_topology()
    watch = StallWatch(pool, bus, dispatch, settings.replicas.timeout_s)

    assert await watch.check() == 0
    await asyncio.sleep(STALL_S + 0.2)
    assert await watch.check() == 2
