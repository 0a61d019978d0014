from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from mailfleet_dispatcher import queries
from mailfleet_dispatcher.assignment import Assigner, capacity, distribute, pool_members
from mailfleet_dispatcher.settings import Settings

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


async def owners(db: Conn, ids: list[int]) -> set[UUID]:
    rows = await db.fetch("SELECT DISTINCT account_id FROM messages WHERE id = ANY($1)", ids)
    return {r["account_id"] for r in rows}


def room(account_id: UUID, tags: set[str]) -> queries.AccountRoom:
    return queries.AccountRoom(account_id, 0, frozenset(tags), 100, 0, 0)


def test_a_pool_is_its_named_accounts_and_every_account_carrying_one_of_its_tags() -> None:
    eu, us, named, other = uuid4(), uuid4(), uuid4(), uuid4()
    accounts = [room(eu, {"eu"}), room(us, {"us", "warm"}), room(named, set()), room(other, {"x"})]
    open_campaign = queries.Campaign(uuid4(), frozenset(), frozenset())
    tagged = queries.Campaign(uuid4(), frozenset({named}), frozenset({"eu", "warm"}))
    nobody = queries.Campaign(uuid4(), frozenset(), frozenset({"asia"}))

    members = pool_members([open_campaign, tagged, nobody], accounts)

    assert members == {
        open_campaign.id: None,
        tagged.id: frozenset({eu, us, named}),
        nobody.id: frozenset(),
    }


def test_messages_are_shared_in_proportion_to_the_capacity_left() -> None:
    roomy, tight = uuid4(), uuid4()
    campaign = uuid4()
    candidates = [queries.Candidate(i, campaign) for i in range(1, 9)]

    chosen = distribute(candidates, {roomy: 100, tight: 100}, {}, {roomy: 300, tight: 100})

    assert {a: len(ids) for a, ids in chosen.items()} == {roomy: 6, tight: 2}


def test_capacity_is_the_limit_left_capped_by_what_the_pace_allows_today() -> None:
    fast = queries.AccountRoom(uuid4(), 0, frozenset(), 500, 100, 3)
    slow = queries.AccountRoom(uuid4(), 60_000, frozenset(), 500, 100, 3)

    assert capacity(fast, seconds_left_today=3600) == 400
    assert capacity(slow, seconds_left_today=3600) == 60
    assert capacity(slow, seconds_left_today=1) == 1


async def test_a_campaign_sends_only_through_accounts_carrying_one_of_its_tags(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    eu = await insert_account(db, tags=["eu", "warm"])
    us = await insert_account(db, tags=["us"])
    untagged = await insert_account(db)
    paused = await insert_account(db, tags=["eu"], status="paused")
    campaign = await insert_campaign(db, tags=["eu", "us"])
    ids = await insert_messages(db, campaign, 10)

    result = await make_assigner(pool, publisher, settings).tick()

    assert result.assigned == 10
    assert await owners(db, ids) == {eu, us}
    assert await reserved_today(db, untagged) == await reserved_today(db, paused) == 0


async def test_named_accounts_and_tagged_ones_together_make_the_pool(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    tagged = await insert_account(db, tags=["eu"])
    named = await insert_account(db)
    await insert_account(db, tags=["us"])
    campaign = await insert_campaign(db, pool=[named], tags=["eu"])
    ids = await insert_messages(db, campaign, 10)

    await make_assigner(pool, publisher, settings).tick()

    assert await owners(db, ids) == {tagged, named}


async def test_accounts_tagged_mid_campaign_join_it_and_untagged_or_archived_ones_leave(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    first = await insert_account(db, tags=["eu"])
    second = await insert_account(db, tags=["eu"])
    later = await insert_account(db)
    campaign = await insert_campaign(db, tags=["eu"])
    ids = await insert_messages(db, campaign, 30)
    assigner = Assigner(
        pool, publisher, settings.dispatcher.model_copy(update={"max_per_tick": 10})
    )

    await assigner.tick()
    await db.execute("UPDATE accounts SET tags = '{}' WHERE id = $1", first)
    await db.execute("UPDATE accounts SET status = 'archived' WHERE id = $1", second)
    await db.execute("UPDATE accounts SET tags = '{eu,new}' WHERE id = $1", later)
    await assigner.tick()
    await assigner.tick()

    assert await owners(db, ids[:10]) == {first, second}
    assert await owners(db, ids[10:]) == {later}
    assert await status_counts(db) == {"assigned": 30}


async def test_a_pool_without_an_active_member_assigns_nothing_and_keeps_its_messages(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    await insert_account(db, tags=["us"])
    await insert_account(db, tags=["eu"], status="paused")
    campaign = await insert_campaign(db, tags=["eu"])
    await insert_messages(db, campaign, 5)

    result = await make_assigner(pool, publisher, settings).tick()

    assert result.assigned == 0
    assert await status_counts(db) == {"queued": 5}


async def test_a_pool_is_spread_by_the_capacity_each_account_has_left_today(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    roomy = await insert_account(db, daily_limit=400, tags=["pool"])
    tight = await insert_account(db, daily_limit=400, tags=["pool"])
    today = datetime.now(UTC).date()
    # Used earlier today: 300 left against 100.
    await db.execute(
        "INSERT INTO account_daily_usage (account_id, day, reserved) VALUES ($1, $3, 100),"
        " ($2, $3, 300)",
        roomy,
        tight,
        today,
    )
    campaign = await insert_campaign(db, tags=["pool"])
    await insert_messages(db, campaign, 40)

    await make_assigner(pool, publisher, settings).tick()

    per_account = await assigned_per_account(db)
    assert per_account == {roomy: 30, tight: 10}
    assert await reserved_today(db, roomy) == 130
    assert await reserved_today(db, tight) == 310


async def test_two_dispatchers_never_double_assign_over_overlapping_pools_being_retagged(
    db: Conn, settings: Settings
) -> None:
    tags = [["a"], ["a", "b"], ["b"], ["c"]]
    accounts = [
        await insert_account(db, daily_limit=120, min_gap_ms=50, tags=tags[i % 4])
        for i in range(12)
    ]
    for pool_tags in (["a"], ["b"], ["b", "c"]):
        # More than the fleet can take: whatever its tags, an account always has work.
        await insert_messages(db, await insert_campaign(db, tags=pool_tags), 1000)
    flips = iter(range(10_000))

    async def retag() -> None:
        # One account at a time moves between pools while both dispatchers run.
        account = accounts[next(flips) % len(accounts)]
        await db.execute(
            "UPDATE accounts SET tags = CASE WHEN tags = '{a}' THEN '{c}'::text[]"
            " WHEN tags = '{c}' THEN '{a}'::text[] ELSE tags END WHERE id = $1",
            account,
        )

    published = await dispatch_concurrently(db, settings, ticks=80, between=retag)

    assert len(published) == len(set(published))
    per_account = await assigned_per_account(db)
    for account in accounts:
        assert await reserved_today(db, account) == per_account.get(account, 0) <= 120
    assert sum(per_account.values()) == len(published) == 1440


async def test_limits_and_warm_up_stay_exact_over_a_thousand_accounts_and_two_dispatchers(
    db: Conn, settings: Settings
) -> None:
    today = datetime.now(UTC).date()
    await db.execute(
        """
        INSERT INTO accounts (name, smtp_host, smtp_port, smtp_tls, from_email, daily_limit,
                              warmup_started_on, warmup_initial, warmup_increment, tags)
        SELECT 'fleet ' || g, '127.0.0.1', 2525, 'none', 'news@example.com', 3 + g % 3,
               CASE WHEN g % 4 = 0 THEN $1::date - 1 END, 1, 1,
               CASE WHEN g % 2 = 0 THEN '{even}'::text[] ELSE '{odd}'::text[] END
        FROM generate_series(1, 1200) AS g
        """,
        today,
    )
    limits = {
        r["id"]: r["limit"]
        for r in await db.fetch(
            "SELECT id, account_effective_limit(a, $1) AS limit FROM accounts a", today
        )
    }
    await insert_messages(db, await insert_campaign(db, tags=["even"]), 4000)
    await insert_messages(db, await insert_campaign(db, tags=["odd"]), 4000)

    published = await dispatch_concurrently(db, settings, ticks=15)

    assert len(published) == len(set(published))
    per_account = await assigned_per_account(db)
    usage = {
        r["account_id"]: r["reserved"]
        for r in await db.fetch("SELECT account_id, reserved FROM account_daily_usage")
    }
    assert usage == per_account
    assert all(per_account[a] == limits[a] for a in per_account)
    assert sum(per_account.values()) == len(published) == sum(limits.values())


async def test_a_fleet_larger_than_a_tick_is_worked_through_account_by_account(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    accounts = [await insert_account(db, daily_limit=100, tags=["fleet"]) for _ in range(20)]
    campaign = await insert_campaign(db, tags=["fleet"])
    await insert_messages(db, campaign, 20)
    assigner = Assigner(pool, publisher, settings.dispatcher.model_copy(update={"max_per_tick": 5}))

    results = [await assigner.tick() for _ in range(4)]

    assert [r.assigned for r in results] == [5, 5, 5, 5]
    assert await assigned_per_account(db) == dict.fromkeys(accounts, 1)


async def test_a_small_pool_is_not_crowded_out_by_a_roomier_one(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    roomy = [await insert_account(db, daily_limit=1000, tags=["roomy"]) for _ in range(10)]
    small = [await insert_account(db, daily_limit=10, tags=["small"]) for _ in range(2)]
    first = await insert_messages(db, await insert_campaign(db, tags=["roomy"]), 6)
    second = await insert_messages(db, await insert_campaign(db, tags=["small"]), 6)
    assigner = Assigner(pool, publisher, settings.dispatcher.model_copy(update={"max_per_tick": 6}))

    results = [await assigner.tick() for _ in range(2)]

    assert [r.assigned for r in results] == [6, 6]
    assert await owners(db, first) <= set(roomy)
    assert await owners(db, second) == set(small)


async def test_accounts_of_equal_capacity_take_turns_when_a_tick_reaches_only_some(
    db: Conn, pool: Any, publisher: RecordingPublisher, settings: Settings
) -> None:
    # One a minute, a limit the pace can never reach: every account's capacity is its pace's,
    # the same for all, and stays so however much it is given.
    accounts = [
        await insert_account(db, daily_limit=1_000_000, min_gap_ms=60_000) for _ in range(20)
    ]
    campaign = await insert_campaign(db)
    await insert_messages(db, campaign, 60)
    assigner = Assigner(pool, publisher, settings.dispatcher.model_copy(update={"max_per_tick": 5}))

    for _ in range(12):
        assert (await assigner.tick()).assigned == 5
        await db.execute("UPDATE messages SET status = 'sent' WHERE status = 'assigned'")

    used = await assigned_per_account(db)
    assert sum(used.values()) == 60
    assert len(used) > 10
    assert set(used) <= set(accounts)
