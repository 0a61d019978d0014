"""What a replica reports of how long its commands waited before it started them."""

import pytest
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
