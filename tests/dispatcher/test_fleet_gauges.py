from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from faststream.asgi import AsgiFastStream
from mailfleet_common.settings import AccountRateSettings
from mailfleet_dispatcher import fleet, queries
from mailfleet_dispatcher.fleet import FleetCollector, FleetGauges
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Conn, eventually, insert_account, insert_campaign, insert_messages

RATES = AccountRateSettings(bounce_rate_max=0.04, complaint_rate_max=0.002, rate_window_sends=8)


def samples(collector: FleetCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What a scrape of `collector` shows, by sample name and labels."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def of(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> dict[Any, float]:
    """The samples of one metric, by their labels (one label: its value)."""
    found: dict[Any, float] = {}
    for (sample, labels), value in values.items():
        if sample == name:
            found[None if not labels else labels[0][1] if len(labels) == 1 else labels] = value
    return found


def gauges(settings_dsn: str, interval_s: float = 60.0) -> tuple[FleetGauges, FleetCollector]:
    collector = FleetCollector()
    return FleetGauges(settings_dsn, collector, interval_s, RATES), collector


async def usage(db: Conn, account: UUID, *, reserved: int, sent: int) -> None:
    await db.execute(
        "INSERT INTO account_daily_usage (account_id, day, reserved, sent)"
        " VALUES ($1, (now() AT TIME ZONE 'UTC')::date, $2, $3)",
        account,
        reserved,
        sent,
    )


async def sends(db: Conn, campaign: UUID, account: UUID, count: int, **marks: Any) -> list[int]:
    """`count` messages the account sent a minute ago, some marked bounced or complained."""
    ids = await insert_messages(db, campaign, count, status="sent", account_id=account)
    await db.execute(
        "UPDATE messages SET sent_at = now() - interval '1 minute' WHERE id = ANY($1)", ids
    )
    for column, n in marks.items():
        value = "'hard'" if column == "bounce" else "now()"
        await db.execute(
            f"UPDATE messages SET {column} = {value} WHERE id = ANY($1)",  # noqa: S608
            ids[:n],
        )
    return ids


async def crafted_fleet(db: Conn) -> dict[str, UUID]:
    """Accounts in every status, a backlog in every state, rates, suppressions."""
    # Warm-up day 2 of 20 + 20 per day: 60 today, below the 100 configured.
    warming = await insert_account(
        db, daily_limit=100, warmup_started_on=datetime.now(UTC).date() - timedelta(days=2)
    )
    paused = await insert_account(db, daily_limit=500, status="paused")
    await db.execute(
        "UPDATE accounts SET status_reason = 'SMTP authentication failed' WHERE id = $1", paused
    )
    disabled = await insert_account(db, status="disabled")
    archived = await insert_account(db, status="archived")
    await usage(db, warming, reserved=10, sent=5)
    await usage(db, paused, reserved=3, sent=3)
    running = await insert_campaign(db)
    await insert_campaign(db, status="draft")
    queued = await insert_messages(db, running, 3)
    await db.execute(
        "UPDATE messages SET created_at = now() - interval '1 hour' WHERE id = $1", queued[0]
    )
    await insert_messages(db, running, 2, status="assigned", account_id=warming)
    await insert_messages(
        db, running, 1, status="deferred", next_attempt_at=datetime.now(UTC) - timedelta(minutes=1)
    )
    await insert_messages(db, running, 1, status="sending", account_id=warming)
    await insert_messages(db, running, 1, status="uncertain", account_id=warming)
    # The window is the newest 8 sends: of the 10, the two oldest fall out of it.
    old = await sends(db, running, warming, 2, bounce=2)
    await db.execute(
        "UPDATE messages SET sent_at = now() - interval '1 day' WHERE id = ANY($1)", old
    )
    await sends(db, running, warming, 8, bounce=1, complained_at=2)
    await sends(db, running, paused, 4, bounce=2)
    await db.execute(
        "INSERT INTO suppressions (email, reason, expires_at) VALUES"
        " ('a@example.com', 'manual', NULL), ('b@example.com', 'bounce', now() + interval '1 day'),"
        " ('c@example.com', 'bounce', now() - interval '1 day')"
    )
    return {"warming": warming, "paused": paused, "disabled": disabled, "archived": archived}


async def test_the_gauges_show_the_fleet_as_it_is(db: Conn, database_dsn: str) -> None:
    ids = await crafted_fleet(db)
    job, collector = gauges(database_dsn)
    try:
        assert await job.step()
        values = samples(collector)
    finally:
        await job.release()

    assert of(values, "mailfleet_backlog_messages") == {
        "queued": 3,
        "assigned": 2,
        "deferred": 1,
        "sending": 1,
        "uncertain": 1,
    }
    age = of(values, "mailfleet_backlog_oldest_queued_age_seconds")[None]
    assert 3600 <= age < 3700
    # Assigned 2, plus the 4 due (3 queued, 1 deferred) within the 50 left of 60.
    assert of(values, "mailfleet_backlog_sendable_messages") == {None: 6}
    warming, paused = str(ids["warming"]), str(ids["paused"])
    assert of(values, "mailfleet_account_sent_today") == {warming: 5, paused: 3}
    assert of(values, "mailfleet_account_daily_limit") == {warming: 60, paused: 500}
    assert of(values, "mailfleet_account_paused") == {
        (("account", paused), ("reason", "SMTP authentication failed")): 1
    }
    assert of(values, "mailfleet_account_bounce_rate") == {warming: 1 / 8, paused: 2 / 4}
    assert of(values, "mailfleet_account_complaint_rate") == {warming: 2 / 8, paused: 0}
    assert of(values, "mailfleet_account_rate_max") == {"bounce": 0.04, "complaint": 0.002}
    assert of(values, "mailfleet_accounts") == {
        "active": 1,
        "paused": 1,
        "disabled": 1,
        "archived": 1,
    }
    assert of(values, "mailfleet_campaigns_running") == {None: 1}
    assert of(values, "mailfleet_suppressions") == {None: 2}
    refreshed = of(values, "mailfleet_fleet_gauges_refreshed_timestamp_seconds")[None]
    assert abs(refreshed - datetime.now(UTC).timestamp()) < 30


async def test_the_rates_are_the_ones_the_bouncer_judges(db: Conn, database_dsn: str) -> None:
    ids = await crafted_fleet(db)
    # Resuming an account starts its window afresh, for the bouncer and the gauges alike.
    await db.execute(
        "UPDATE accounts SET status = 'active', rates_since = now() - interval '30 seconds'"
        " WHERE id = $1",
        ids["paused"],
    )
    job, collector = gauges(database_dsn)
    try:
        await job.step()
        rates = of(samples(collector), "mailfleet_account_bounce_rate")
    finally:
        await job.release()
    assert rates == {str(ids["warming"]): 1 / 8}


async def test_only_the_replica_holding_the_lock_exports_and_another_takes_over(
    db: Conn, database_dsn: str
) -> None:
    await crafted_fleet(db)
    first, first_out = gauges(database_dsn)
    second, second_out = gauges(database_dsn)
    try:
        assert await first.step()
        assert not await second.step()
        assert of(samples(first_out), "mailfleet_campaigns_running") == {None: 1}
        assert samples(second_out) == {}
        # The holder's connection dies (its process killed, its host gone).
        killed = await db.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted"
            "   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            "   AND ((classid::bigint << 32) | objid::bigint) = $1",
            queries.FLEET_GAUGES_LOCK,
        )
        assert killed
        # Taken at the next try once PostgreSQL has ended the session (a few milliseconds).
        assert await eventually(second.step, wait_s=5)
        assert not await first.step()
        assert samples(first_out) == {}
        assert first_out.exposition() == b""
        assert b"mailfleet_campaigns_running 1.0" in second_out.exposition()
        assert of(samples(second_out), "mailfleet_campaigns_running") == {None: 1}
    finally:
        await first.release()
        await second.release()


async def test_a_stopped_replica_gives_the_lock_up_at_once(db: Conn, database_dsn: str) -> None:
    first, first_out = gauges(database_dsn)
    second, second_out = gauges(database_dsn)
    try:
        assert await first.step()
        await first.release()
        assert samples(first_out) == {}
        assert await second.step()
        assert of(samples(second_out), "mailfleet_campaigns_running") == {None: 0}
    finally:
        await first.release()
        await second.release()


async def test_stale_account_series_disappear_on_the_next_refresh(
    db: Conn, database_dsn: str
) -> None:
    ids = await crafted_fleet(db)
    job, collector = gauges(database_dsn)
    try:
        await job.step()
        assert of(samples(collector), "mailfleet_account_paused")
        await db.execute("UPDATE accounts SET status = 'archived' WHERE id = $1", ids["warming"])
        await db.execute(
            "UPDATE accounts SET status = 'active', status_reason = NULL WHERE id = $1",
            ids["paused"],
        )
        await job.step()
        values = samples(collector)
    finally:
        await job.release()
    paused = str(ids["paused"])
    assert of(values, "mailfleet_account_paused") == {}
    assert of(values, "mailfleet_account_sent_today") == {paused: 3}
    assert of(values, "mailfleet_account_daily_limit") == {paused: 500}
    assert of(values, "mailfleet_account_bounce_rate") == {paused: 0.5}
    assert of(values, "mailfleet_accounts")["archived"] == 2


def room(status: str = "active", *, limit: int, reserved: int = 0, **kw: Any) -> Any:
    return queries.AccountDay(
        uuid4(),
        status,
        None,
        kw.get("held", False),
        kw.get("min_gap_ms", 0),
        frozenset(kw.get("tags", ())),
        limit,
        reserved,
        0,
    )


def test_sendable_is_capped_by_each_pools_capacity_left_and_counts_assigned() -> None:
    eu = room(limit=100, reserved=90, tags=("eu",))  # 10 left
    us = room(limit=100, reserved=0, tags=("us",))  # 100 left
    held = room(limit=1000, held=True, tags=("eu",))
    paused = room("paused", limit=1000, tags=("eu",))
    paced = room(limit=10_000, min_gap_ms=3_600_000, tags=("slow",))  # its pace: 1 an hour
    campaigns = [
        queries.CampaignDue(queries.Campaign(uuid4(), frozenset(), frozenset({"eu"})), 50),
        queries.CampaignDue(queries.Campaign(uuid4(), frozenset(), frozenset({"us"})), 30),
        queries.CampaignDue(queries.Campaign(uuid4(), frozenset(), frozenset({"slow"})), 30),
    ]
    accounts = [eu, us, held, paused, paced]
    # 3600 s left today: the paced account can send one more.
    assert fleet.sendable(7, accounts, campaigns, 3600.0) == 7 + 10 + 30 + 1
    everyone = queries.CampaignDue(queries.Campaign(uuid4(), frozenset(), frozenset()), 10_000)
    assert fleet.sendable(0, accounts, [everyone], 3600.0) == 10 + 100 + 1
    assert fleet.sendable(0, accounts, [], 3600.0) == 0


@pytest.fixture
def fast_gauges(settings: Any) -> Any:
    settings.dispatcher = settings.dispatcher.model_copy(update={"fleet_gauges_s": 0.2})
    return settings


async def scrape(app: AsgiFastStream) -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher") as client:
        return (await client.get("/metrics")).text


@pytest.mark.rabbit
async def test_the_running_dispatcher_serves_the_fleet_gauges(
    db: Conn, fast_gauges: Any, app: AsgiFastStream
) -> None:
    ids = await crafted_fleet(db)

    # The fleet is written in several statements: wait for a refresh after the last of them.
    async def shows_the_whole_fleet() -> bool:
        text = await scrape(app)
        return (
            f'mailfleet_account_paused{{account="{ids["paused"]}"' in text
            and "mailfleet_suppressions 2.0" in text
        )

    assert await eventually(shows_the_whole_fleet, wait_s=10)
    text = await scrape(app)
    # The dispatcher is assigning and sweeping meanwhile: only what it leaves alone is exact.
    assert "mailfleet_suppressions 2.0" in text
    assert 'mailfleet_accounts{status="disabled"} 1.0' in text
    for state in fleet.BACKLOG_STATES:
        assert f'mailfleet_backlog_messages{{state="{state}"}}' in text
    assert "mailfleet_fleet_gauges_refreshed_timestamp_seconds " in text
