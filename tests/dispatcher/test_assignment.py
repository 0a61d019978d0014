from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from mailfleet_dispatcher import queries
from mailfleet_dispatcher.assignment import distribute, lookahead
from mailfleet_dispatcher.settings import DispatchSettings, Settings

from .conftest import (
    Conn,
    RecordingPublisher,
    assigned_per_account,
    dispatch_concurrently,
    insert_account,
    insert_campaign,
    insert_messages,
    make_assigner,
    reserved_today,
    status_counts,
)


async def test_daily_limit_is_never_exceeded(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    account = await insert_account(db, daily_limit=7)
    campaign = await insert_campaign(db)
    await insert_messages(db, campaign, 20)
    assigner = make_assigner(pool, publisher, settings)

    first = await assigner.tick()
    await db.execute("UPDATE messages SET status = 'sent' WHERE status = 'assigned'")
    second = await assigner.tick()

    assert (first.assigned, second.assigned) == (7, 0)
    assert await reserved_today(db, account) == 7
    assert await status_counts(db) == {"sent": 7, "queued": 13}


async def test_warm_up_ramp_caps_the_daily_limit(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    today = datetime.now(UTC).date()
    # Day 3 of the ramp: 5 + 3 * 4 = 17, below the daily limit of 100.
    account = await insert_account(
        db,
        daily_limit=100,
        warmup_started_on=today - timedelta(days=3),
        warmup_initial=5,
        warmup_increment=4,
    )
    campaign = await insert_campaign(db)
    await insert_messages(db, campaign, 50)
    assigner = make_assigner(pool, publisher, settings)

    await assigner.tick()
    await db.execute("UPDATE messages SET status = 'sent' WHERE status = 'assigned'")
    await assigner.tick()

    assert await reserved_today(db, account) == 17
    assert await status_counts(db) == {"sent": 17, "queued": 33}


async def test_the_rest_is_assigned_after_the_utc_day_rolls_over(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    account = await insert_account(db, daily_limit=5)
    campaign = await insert_campaign(db)
    await insert_messages(db, campaign, 8)
    assigner = make_assigner(pool, publisher, settings)

    await assigner.tick()
    await db.execute("UPDATE messages SET status = 'sent' WHERE status = 'assigned'")
    stuck = await assigner.tick()
    await db.execute("UPDATE account_daily_usage SET day = day - 1")
    next_day = await assigner.tick()

    assert stuck.assigned == 0
    assert next_day.assigned == 3
    assert await reserved_today(db, account) == 3
    assert await status_counts(db) == {"sent": 5, "assigned": 3}


async def test_pacing_look_ahead_bounds_what_is_in_flight(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    # One message per second, five seconds ahead: five in flight at most.
    await insert_account(db, min_gap_ms=1000)
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, 20)
    assigner = make_assigner(pool, publisher, settings)

    first = await assigner.tick()
    full = await assigner.tick()
    await db.execute("UPDATE messages SET status = 'sending' WHERE id = ANY($1)", ids[:3])
    await db.execute("UPDATE messages SET status = 'sent' WHERE id = ANY($1)", ids[:2])
    refill = await assigner.tick()

    assert (first.assigned, full.assigned, refill.assigned) == (5, 0, 2)
    assert publisher.ids() == ids[:7]


def test_look_ahead_follows_the_pace_and_the_in_flight_cap() -> None:
    settings = DispatchSettings(lookahead_s=5, max_inflight=500)
    assert lookahead(1000, settings) == 5
    assert lookahead(3000, settings) == 2
    assert lookahead(60_000, settings) == 1
    assert lookahead(1, settings) == 500
    assert lookahead(0, settings) == 500


def test_scarce_messages_are_spread_over_accounts_instead_of_filling_the_first() -> None:
    accounts = [uuid4() for _ in range(3)]
    campaign = uuid4()
    candidates = [queries.Candidate(i, campaign) for i in range(1, 7)]

    chosen = distribute(candidates, dict.fromkeys(accounts, 100), {campaign: None})

    assert {a: len(ids) for a, ids in chosen.items()} == dict.fromkeys(accounts, 2)


def test_distribution_respects_each_campaigns_pool() -> None:
    a, b = uuid4(), uuid4()
    open_campaign, only_b = uuid4(), uuid4()
    candidates = [
        queries.Candidate(1, only_b),
        queries.Candidate(2, only_b),
        queries.Candidate(3, open_campaign),
        queries.Candidate(4, open_campaign),
    ]

    chosen = distribute(candidates, {a: 2, b: 2}, {open_campaign: None, only_b: frozenset({b})})

    assert chosen == {b: [1, 2], a: [3, 4]}


async def test_campaign_pool_and_start_time_are_respected(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    outside = await insert_account(db)
    inside = await insert_account(db)
    pooled = await insert_campaign(db, pool=[inside])
    later = await insert_campaign(db, start_at=datetime.now(UTC) + timedelta(hours=1))
    started = await insert_campaign(db, start_at=datetime.now(UTC) - timedelta(minutes=1))
    pooled_ids = await insert_messages(db, pooled, 4)
    await insert_messages(db, later, 4)
    started_ids = await insert_messages(db, started, 2)

    await make_assigner(pool, publisher, settings).tick()

    rows = await db.fetch("SELECT id, account_id FROM messages WHERE status = 'assigned'")
    owners = {r["id"]: r["account_id"] for r in rows}
    assert set(owners) == set(pooled_ids + started_ids)
    assert all(owners[i] == inside for i in pooled_ids)
    assert await reserved_today(db, outside) + await reserved_today(db, inside) == 6


async def test_cancelled_paused_and_draft_campaigns_are_not_assigned(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    await insert_account(db)
    for status in ("paused", "cancelled", "draft", "completed"):
        await insert_messages(db, await insert_campaign(db, status=status), 3)

    result = await make_assigner(pool, publisher, settings).tick()

    assert result.assigned == 0
    assert await status_counts(db) == {"queued": 12}


async def test_inactive_accounts_get_nothing(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    for status in ("paused", "disabled", "archived"):
        await insert_account(db, status=status)
    await insert_messages(db, await insert_campaign(db), 3)

    result = await make_assigner(pool, publisher, settings).tick()

    assert result.assigned == 0


async def test_deferred_retries_are_assigned_only_when_due(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    await insert_account(db)
    campaign = await insert_campaign(db)
    now = datetime.now(UTC)
    due = await insert_messages(
        db, campaign, 2, status="deferred", next_attempt_at=now - timedelta(seconds=1)
    )
    await insert_messages(
        db, campaign, 3, status="deferred", next_attempt_at=now + timedelta(minutes=5)
    )

    await make_assigner(pool, publisher, settings).tick()

    assert sorted(publisher.ids()) == due
    assert await status_counts(db) == {"assigned": 2, "deferred": 3}


async def test_assignment_commands_carry_the_account_and_oldest_ids_first(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    account = await insert_account(db)
    campaign = await insert_campaign(db)
    ids = await insert_messages(db, campaign, 10)

    await make_assigner(pool, publisher, settings).tick()

    assert publisher.published == [(account, ids)]
    row = await db.fetchrow(
        "SELECT count(*) AS n, bool_and(assigned_at IS NOT NULL) AS stamped FROM messages"
        " WHERE status = 'assigned' AND account_id = $1",
        account,
    )
    assert row is not None
    assert (row["n"], row["stamped"]) == (10, True)


async def test_two_dispatchers_running_concurrently_never_double_assign(
    db: Conn, settings: Settings
) -> None:
    accounts = [await insert_account(db, daily_limit=150, min_gap_ms=50) for _ in range(10)]
    campaigns = [await insert_campaign(db) for _ in range(3)]
    for campaign in campaigns:
        await insert_messages(db, campaign, 600)

    published = await dispatch_concurrently(db, settings)

    assert len(published) == len(set(published))
    per_account = await assigned_per_account(db)
    for account in accounts:
        assert await reserved_today(db, account) == per_account.get(account, 0) <= 150
    assert sum(per_account.values()) == len(published) == 1500


async def test_accounts_are_topped_up_exactly_to_their_look_ahead_whatever_the_pace(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    # Look-ahead 5 s: 2 at one per 3 s, 1 at one per 7 s, the in-flight cap at one per 1 ms.
    paces = {3000: 2, 7000: 1, 1: settings.dispatcher.max_inflight}
    accounts = {gap: await insert_account(db, min_gap_ms=gap) for gap in paces}
    campaign = await insert_campaign(db)
    for account in accounts.values():
        await insert_messages(db, campaign, 1, status="sending", account_id=account)
    await insert_messages(db, campaign, 1000)

    await make_assigner(pool, publisher, settings).tick()

    per_account = await assigned_per_account(db)
    assert per_account == {accounts[gap]: paces[gap] for gap in paces}
