"""Alert rules: promtool accepts them and their unit tests pass; each alert carries what an
on-call needs and has a unit test; Kubernetes gets the same rules and scrapes every service.
"""

import re
import subprocess

import yaml

from tests.ops.monitoring import ALERTS, ALERTS_TEST, K8S, REPO, alert_rules, command

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


def test_the_runbook_explains_every_alert_and_no_other() -> None:
    runbook = (REPO / "docs" / "operations.md").read_text()
    alerts = runbook.split("\n## Alerts\n", 1)[1]
    sections = re.split(r"^### (\S+)\n", alerts, flags=re.M)[1:]
    explained = dict(zip(sections[::2], sections[1::2], strict=True))
    assert set(explained) == EXPECTED_ALERTS
    for rule in alert_rules():
        text = explained[rule["alert"]]
        # Its severity, and at least one thing to do.
        assert rule["labels"]["severity"].capitalize() in text, rule["alert"]
        assert "\n- " in text, rule["alert"]


def test_the_prometheus_rule_for_kubernetes_holds_the_very_same_rules() -> None:
    rule = yaml.safe_load((K8S / "monitoring" / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def test_every_scraped_deployment_has_a_pod_monitor_on_its_metrics_port() -> None:
    kustomization = yaml.safe_load((K8S / "monitoring" / "kustomization.yaml").read_text())
    applied = [
        document
        for resource in kustomization["resources"]
        for document in yaml.safe_load_all((K8S / "monitoring" / resource).read_text())
        if document
    ]
    monitors = {
        doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]: doc
        for doc in applied
        if doc["kind"] == "PodMonitor"
    }
    scraped = {}
    for path in K8S.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            template = doc["spec"]["template"]
            if template["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true":
                scraped[doc["metadata"]["name"]] = template
    assert set(scraped) == {
        "mailfleet-api", "mailfleet-dispatcher", "mailfleet-sender", "mailfleet-tracker",
        "mailfleet-bouncer", "mailfleet-webhooks",
    }  # fmt: skip
    assert set(monitors) == set(scraped)
    for name, template in scraped.items():
        monitor = monitors[name]["spec"]
        assert template["metadata"]["labels"]["app.kubernetes.io/name"] == name
        # The job label is the pod's app.kubernetes.io/name: the job the rules select on.
        assert monitor["jobLabel"] == "app.kubernetes.io/name"
        ports = {
            port["name"]: port["containerPort"]
            for container in template["spec"]["containers"]
            for port in container.get("ports", [])
        }
        annotations = template["metadata"]["annotations"]
        (endpoint,) = monitor["podMetricsEndpoints"]
        assert ports[endpoint["port"]] == int(annotations["prometheus.io/port"]), name
        assert endpoint["path"] == annotations["prometheus.io/path"], name
