import json
from typing import Any

from faststream.rabbit import RabbitBroker
from mailfleet_common import topology
from mailfleet_dispatcher.assignment import Assigner
from mailfleet_dispatcher.bus import Bus
from mailfleet_dispatcher.settings import Settings
from mailfleet_dispatcher.sweeps import Sweeper

from .conftest import (
    Conn,
    RecordingPublisher,
    bound_queue,
    insert_account,
    insert_campaign,
    insert_messages,
    next_body,
    reserved_today,
    status_counts,
)


def make_sweeper(pool: Any, broker: RabbitBroker, settings: Settings, **overrides: Any) -> Sweeper:
    dispatch = settings.dispatcher.model_copy(update=overrides)
    return Sweeper(pool, Bus(broker, dispatch.batch_size), dispatch, settings.replicas.timeout_s)


async def test_paused_accounts_assignments_return_to_the_queue_and_release_their_units(
    db: Conn, pool: Any, broker: RabbitBroker, publisher: RecordingPublisher, settings: Settings
) -> None:
    paused = await insert_account(db)
    campaign = await insert_campaign(db)
    await insert_messages(db, campaign, 4)
    await Assigner(pool, publisher, settings.dispatcher).tick()
    await db.execute("UPDATE accounts SET status = 'paused' WHERE id = $1", paused)

    result = await make_sweeper(pool, broker, settings).sweep()

    assert result.requeued == 4
    assert await reserved_today(db, paused) == 0
    assert await status_counts(db) == {"queued": 4}
    assert await db.fetchval("SELECT count(*) FROM messages WHERE account_id IS NOT NULL") == 0


async def test_an_account_waiting_for_its_server_gets_no_work_and_gives_back_what_it_holds(
    db: Conn, pool: Any, broker: RabbitBroker, publisher: RecordingPublisher, settings: Settings
) -> None:
    waiting = await insert_account(db)
    campaign = await insert_campaign(db)
    await insert_messages(db, campaign, 4)
    assigner = Assigner(pool, publisher, settings.dispatcher)
    await assigner.tick()
    # What the sender writes when the account's server cannot be reached.
    await db.execute(
        "UPDATE accounts SET held_until = now() + interval '1 minute', held_reason = 'refused'"
        " WHERE id = $1",
        waiting,
    )
    other = await insert_account(db)

    result = await make_sweeper(pool, broker, settings, stranded_after_s=60).sweep()
    await assigner.tick()

    assert result.requeued == 4
    assert await reserved_today(db, waiting) == 0
    owners = await db.fetch("SELECT DISTINCT account_id FROM messages")
    assert [r["account_id"] for r in owners] == [other]
    assert await status_counts(db) == {"assigned": 4}

    await db.execute("UPDATE accounts SET held_until = now() WHERE id = $1", waiting)
    await insert_messages(db, campaign, 4)
    await assigner.tick()
    assert await db.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", waiting) > 0


async def test_stranded_assignments_return_to_the_queue_and_fresh_ones_stay(
    db: Conn, pool: Any, broker: RabbitBroker, publisher: RecordingPublisher, settings: Settings
) -> None:
    account = await insert_account(db)
    campaign = await insert_campaign(db)
    await insert_messages(db, campaign, 3)
    await Assigner(pool, publisher, settings.dispatcher).tick()

    patient = await make_sweeper(pool, broker, settings, stranded_after_s=60).sweep()
    impatient = await make_sweeper(pool, broker, settings, stranded_after_s=0).sweep()

    assert (patient.requeued, impatient.requeued) == (0, 3)
    assert await reserved_today(db, account) == 0
    assert await status_counts(db) == {"queued": 3}


async def test_the_unit_goes_back_to_the_day_it_was_reserved_on(
    db: Conn, pool: Any, broker: RabbitBroker, publisher: RecordingPublisher, settings: Settings
) -> None:
    account = await insert_account(db)
    campaign = await insert_campaign(db)
    await insert_messages(db, campaign, 2)
    await Assigner(pool, publisher, settings.dispatcher).tick()
    await db.execute("UPDATE account_daily_usage SET day = day - 1")
    await db.execute("UPDATE messages SET assigned_at = assigned_at - interval '1 day'")

    await make_sweeper(pool, broker, settings).sweep()

    usage = await db.fetch(
        "SELECT reserved FROM account_daily_usage WHERE account_id = $1", account
    )
    assert [r["reserved"] for r in usage] == [0]


async def test_messages_cancelled_while_assigned_give_their_units_back(
    db: Conn, pool: Any, broker: RabbitBroker, publisher: RecordingPublisher, settings: Settings
) -> None:
    account = await insert_account(db)
    campaign = await insert_campaign(db)
    await insert_messages(db, campaign, 3)
    await Assigner(pool, publisher, settings.dispatcher).tick()
    await db.execute("UPDATE campaigns SET status = 'cancelled'")
    await db.execute("UPDATE messages SET status = 'cancelled'")
    sweeper = make_sweeper(pool, broker, settings)

    first = await sweeper.sweep()
    again = await sweeper.sweep()

    assert (first.released_cancelled, again.released_cancelled) == (3, 0)
    assert await reserved_today(db, account) == 0


async def test_a_dead_replicas_sending_messages_become_uncertain_and_are_reported(
    db: Conn, pool: Any, broker: RabbitBroker, settings: Settings
) -> None:
    account = await insert_account(db)
    campaign = await insert_campaign(db)
    await db.execute(
        """
        INSERT INTO sender_replicas (id, heartbeat_at) VALUES
            ('alive', now()), ('silent', now() - interval '1 minute')
        """
    )
    alive = await insert_messages(db, campaign, 1, status="sending")
    silent = await insert_messages(db, campaign, 2, status="sending")
    gone = await insert_messages(db, campaign, 1, status="sending")
    await db.execute("UPDATE messages SET account_id = $1, attempts = 1", account)
    await db.execute("UPDATE messages SET sender_replica = 'alive' WHERE id = ANY($1)", alive)
    await db.execute("UPDATE messages SET sender_replica = 'silent' WHERE id = ANY($1)", silent)
    await db.execute("UPDATE messages SET sender_replica = 'gone' WHERE id = ANY($1)", gone)
    reports = await bound_queue(broker, topology.EVENTS, topology.MESSAGE_UNCERTAIN_KEY)

    result = await make_sweeper(pool, broker, settings).sweep()

    assert result.uncertain == sorted(silent + gone)
    assert await status_counts(db) == {"sending": 1, "uncertain": 3}
    events = await db.fetch("SELECT message_id FROM events WHERE type = 'uncertain'")
    assert sorted(r["message_id"] for r in events) == sorted(silent + gone)
    report = json.loads(await next_body(reports))
    assert report["message_ids"] == sorted(silent + gone)


async def test_a_message_sending_far_too_long_under_a_live_replica_becomes_uncertain(
    db: Conn, pool: Any, broker: RabbitBroker, settings: Settings
) -> None:
    account = await insert_account(db)
    campaign = await insert_campaign(db)
    await db.execute("INSERT INTO sender_replicas (id, heartbeat_at) VALUES ('alive', now())")
    fresh = await insert_messages(db, campaign, 1, status="sending")
    stuck = await insert_messages(db, campaign, 1, status="sending")
    await db.execute(
        "UPDATE messages SET account_id = $1, attempts = 1, sender_replica = 'alive'", account
    )
    await db.execute(
        "UPDATE messages SET updated_at = now() - make_interval(secs => $2) WHERE id = ANY($1)",
        stuck,
        settings.dispatcher.sending_timeout_s + 1,
    )

    result = await make_sweeper(pool, broker, settings).sweep()

    assert result.uncertain == stuck
    statuses = dict(await db.fetch("SELECT id, status FROM messages"))
    assert statuses == {fresh[0]: "sending", stuck[0]: "uncertain"}


async def test_running_campaigns_with_nothing_left_to_deliver_are_completed(
    db: Conn, pool: Any, broker: RabbitBroker, settings: Settings
) -> None:
    account = await insert_account(db)
    await db.execute("INSERT INTO sender_replicas (id) VALUES ('alive')")
    finished = await insert_campaign(db)
    await insert_messages(db, finished, 2, status="sent")
    await insert_messages(db, finished, 1, status="failed")
    busy = {}
    for status in ("queued", "assigned", "sending", "deferred"):
        busy[status] = await insert_campaign(db)
        await insert_messages(db, busy[status], 1, status="sent")
        await insert_messages(db, busy[status], 1, status=status)
    empty = await insert_campaign(db)
    await db.execute(
        "UPDATE messages SET account_id = $1, assigned_at = now(), sender_replica = 'alive'"
        " WHERE status IN ('assigned', 'sending')",
        account,
    )

    result = await make_sweeper(pool, broker, settings).sweep()

    rows = await db.fetch("SELECT id, status, completed_at FROM campaigns")
    statuses = {r["id"]: r["status"] for r in rows}
    assert result.completed == 1
    assert statuses[finished] == "completed"
    assert all(statuses[c] == "running" for c in busy.values())
    assert statuses[empty] == "running"
    assert (
        await db.fetchval(
            "SELECT count(*) FROM events WHERE type = 'campaign-completed' AND campaign_id = $1",
            finished,
        )
        == 1
    )


async def test_events_partitions_exist_for_this_and_next_month(
    db: Conn, pool: Any, broker: RabbitBroker, settings: Settings
) -> None:
    await db.execute(
        """
        DO $$ BEGIN
            EXECUTE format('DROP TABLE IF EXISTS %I',
                'events_' || to_char(now() AT TIME ZONE 'UTC' + interval '1 month', 'YYYY_MM'));
        END $$
        """
    )

    await make_sweeper(pool, broker, settings).ensure_partitions()

    names = await db.fetchval(
        """
        SELECT array_agg(to_regclass('events_' || to_char(d, 'YYYY_MM'))::text)
        FROM (VALUES (now() AT TIME ZONE 'UTC'), (now() AT TIME ZONE 'UTC' + interval '1 month'))
             AS t (d)
        """
    )
    assert None not in names
