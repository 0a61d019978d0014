"""The autoscalers' PromQL, evaluated by promtool on series shaped like the dispatcher's.

The KEDA trigger's query and the prometheus-adapter rule (with its template filled in as the
adapter does for an HPA in the namespace mailfleet) must give the sendable backlog while the
fleet gauges are fresh, count it once while the dispatcher's lock moves between replicas,
ignore other namespaces, and give nothing once the gauges stop being refreshed.
"""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import DEPLOY, load_manifests, of_kind

SENDABLE = "mailfleet_backlog_sendable_messages"
REFRESHED = "mailfleet_fleet_gauges_refreshed_timestamp_seconds"


def keda_query() -> str:
    scaled = next(
        of_kind(load_manifests(DEPLOY / "autoscaling/keda/scaledobject.yaml"), "ScaledObject")
    )
    query: str = scaled["spec"]["triggers"][0]["metadata"]["query"]
    return query


def adapter_query() -> str:
    values = yaml.safe_load((DEPLOY / "autoscaling/hpa/prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["external"]
    assert rule["name"]["as"] == SENDABLE
    template: str = rule["metricsQuery"]
    return template.replace("<<.Series>>", SENDABLE).replace(
        "<<.LabelMatchers>>", 'namespace="mailfleet"'
    )


def series(name: str, pod: str, values: str, namespace: str = "mailfleet") -> dict[str, str]:
    return {"series": f'{name}{{namespace="{namespace}",pod="{pod}"}}', "values": values}


def expect(query: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"expr": query, "eval_time": "5m", "exp_samples": samples}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        # CI installs it (.ci/run: ensure_prometheus); a skip would prove nothing.
        pytest.fail("promtool is not installed (Debian package prometheus): make test installs it")
    return path


@pytest.mark.parametrize(
    ("query", "labels"),
    [(keda_query(), "{}"), (adapter_query(), '{namespace="mailfleet"}')],
    ids=["keda", "prometheus-adapter"],
)
def test_scaling_query_follows_fresh_gauges_only(
    promtool: str, query: str, labels: str, tmp_path: Path
) -> None:
    # Values every 15 s from 0; a refresh timestamp of 0+15xN equals the evaluation time.
    fresh = [
        series(SENDABLE, "dispatcher-a", "90000+0x40"),
        series(REFRESHED, "dispatcher-a", "0+15x40"),
        # The lock moved: the other replica's last export is still there, lower.
        series(SENDABLE, "dispatcher-b", "80000+0x40"),
        series(REFRESHED, "dispatcher-b", "0+15x40"),
        # Another installation in the same Prometheus.
        series(SENDABLE, "dispatcher-x", "500000+0x40", namespace="staging"),
        series(REFRESHED, "dispatcher-x", "0+15x40", namespace="staging"),
    ]
    # The gauge job stopped after 2 minutes: the values stay, the timestamp no longer moves.
    stale = [
        series(SENDABLE, "dispatcher-a", "90000+0x40"),
        series(REFRESHED, "dispatcher-a", "0+15x8 120+0x32"),
    ]
    tests = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": fresh,
                "promql_expr_test": [expect(query, [{"labels": labels, "value": 90000}])],
            },
            {
                "interval": "15s",
                "input_series": stale,
                "promql_expr_test": [expect(query, [])],
            },
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_wrong_expectation_fails_promtool(promtool: str, tmp_path: Path) -> None:
    # promtool really evaluates: the fresh value with the stale series is refused.
    tests = {
        "rule_files": [],
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    series(SENDABLE, "dispatcher-a", "90000+0x40"),
                    series(REFRESHED, "dispatcher-a", "0+15x8 120+0x32"),
                ],
                "promql_expr_test": [expect(keda_query(), [{"labels": "{}", "value": 90000}])],
            }
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests))
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
