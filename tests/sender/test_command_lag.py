"""What a replica reports of how long its commands waited before it started them."""

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import pytest
from mailfleet_common.messages import SendBatch
from mailfleet_sender.handlers import deliver_send_batch
from mailfleet_sender.membership import CommandLag


def test_the_report_is_the_longest_wait_since_the_previous_one() -> None:
    lag = CommandLag()
    for waited in (0.2, 3.0, 1.0):
        lag.note(waited)
    assert lag.report() == 3.0


def test_a_busy_spell_fades_over_a_few_reports_instead_of_vanishing() -> None:
    lag = CommandLag()
    lag.note(4.0)
    assert lag.report() == 4.0
    lag.note(0.1)
    assert lag.report() == 2.0  # half the previous report outweighs the quiet second
    assert lag.report() == 1.0
    lag.note(1.5)
    assert lag.report() == 1.5


def test_a_dispatcher_clock_ahead_of_ours_reports_no_wait() -> None:
    lag = CommandLag()
    lag.note(-0.05)
    assert lag.report() == pytest.approx(0.0)


class _Deliverer:
    async def deliver_batch(self, account: Any, message_ids: list[int], stopping: Any) -> bool:
        return True


class _Command:
    """An incoming send command, as far as the handler reads it."""

    def __init__(self, account_id: UUID, dispatched_at: datetime, redelivered: bool) -> None:
        self.body = (
            SendBatch(account_id=account_id, message_ids=[1], dispatched_at=dispatched_at)
            .model_dump_json()
            .encode()
        )
        self.redelivered = redelivered
        self.settled = ""

    async def ack(self) -> None:
        self.settled = "ack"


async def _lag_of(*, waited_s: float, free_s_ago: float | None, redelivered: bool) -> float:
    now = datetime.now(UTC)
    account = SimpleNamespace(
        id=uuid4(),
        free_at=datetime.min.replace(tzinfo=UTC)
        if free_s_ago is None
        else now - timedelta(seconds=free_s_ago),
    )
    lag = CommandLag()
    command = _Command(account.id, now - timedelta(seconds=waited_s), redelivered)
    await deliver_send_batch(
        _Deliverer(),  # type: ignore[arg-type]
        lag,
        account,  # type: ignore[arg-type]
        command,  # type: ignore[arg-type]
        asyncio.Event(),
    )
    assert command.settled == "ack"
    return lag.report()


async def test_a_command_counts_the_time_since_it_was_dispatched() -> None:
    assert await _lag_of(waited_s=3.0, free_s_ago=None, redelivered=False) >= 3.0


async def test_a_command_waiting_for_its_accounts_previous_one_counts_only_the_time_since() -> None:
    # Dispatched 3 s ago while the account's previous command was sending (a paced account).
    assert await _lag_of(waited_s=3.0, free_s_ago=0.2, redelivered=False) < 1.0


async def test_a_redelivered_command_waited_elsewhere_and_does_not_count() -> None:
    assert await _lag_of(waited_s=30.0, free_s_ago=None, redelivered=True) == 0.0
