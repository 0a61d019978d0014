"""Alert rules: promtool accepts them and their unit tests pass; each alert carries what an
on-call needs and has a unit test.
"""

import subprocess

import yaml

from tests.ops.monitoring import ALERTS, ALERTS_TEST, alert_rules, command

EXPECTED_ALERTS = {
    "MailfleetAccountPaused",
    "MailfleetBounceRateHigh",
    "MailfleetComplaintRateHigh",
    "MailfleetBacklogStale",
    "MailfleetUncertainMessages",
    "MailfleetNoLiveSender",
    "MailfleetSmtpErrorRate",
    "MailfleetFleetGaugesStale",
    "MailfleetTrackerDroppingEvents",
    "MailfleetBouncerMailboxErrors",
    "MailfleetReplicaDown",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command("promtool"), *args],
        cwd=ALERTS.parent, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_the_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_severity_a_runbook_and_a_unit_test() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == EXPECTED_ALERTS
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]  # a test in which the alert fires
    }
    assert tested == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        # docs/operations.md has a heading per alert, named as the alert.
        assert annotations["runbook_url"] == f"docs/operations.md#{rule['alert'].lower()}"
