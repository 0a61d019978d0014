"""The monitoring side of the ops tests: files under deploy/monitoring, and a real Prometheus.

Prometheus and the PostgreSQL exporter are Debian's packages (prometheus,
prometheus-postgres-exporter), run as processes on free ports with their own temporary
configuration and data; `make test` and .ci/run install them (ensure_prometheus).
"""

import json
import math
import shutil
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.stack import ServiceProcess, free_port

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
ALERTS = MONITORING / "prometheus" / "alerts.yml"
ALERTS_TEST = MONITORING / "prometheus" / "alerts_test.yml"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
K8S = REPO / "deploy" / "k8s"
INSTALL_HINT = (
    "needs Debian's prometheus and prometheus-postgres-exporter packages: `make test` and "
    ".ci/run install them, or: source deploy/local/services.sh && ensure_prometheus"
)
# Grafana's $__rate_interval, as the query API cannot expand it: wide enough to keep every
# event of a short run in the window.
RATE_INTERVAL = "5m"


def command(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        raise AssertionError(f"{name} is not installed: {INSTALL_HINT}")
    return found


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel, PromQL) of every query of every committed dashboard."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets") or []:
                expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                found.append((path.stem, panel["title"], expr))
    return found


def prometheus_config(
    jobs: dict[str, list[str]], rule_files: list[Path], scrape_interval: str = "1s"
) -> str:
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in jobs.items()
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def prometheus(workdir: Path, config: str) -> ServiceProcess:
    """Prometheus on a free port, with this configuration and a fresh data directory."""
    (workdir / "prometheus-data").mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(config)
    port = free_port()
    argv = [
        command("prometheus"),
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return ServiceProcess(
        "prometheus", argv, env={}, port=port, log_path=workdir / "prometheus.log",
        ready_path="/-/ready",
    )  # fmt: skip


def postgres_exporter(workdir: Path, dsn: str) -> ServiceProcess:
    """postgres_exporter on a free port, reading the database of this DSN."""
    port = free_port()
    separator = "&" if "?" in dsn else "?"
    argv = [command("prometheus-postgres-exporter"), f"--web.listen-address=127.0.0.1:{port}"]
    return ServiceProcess(
        "postgres-exporter", argv, env={"DATA_SOURCE_NAME": f"{dsn}{separator}sslmode=disable"},
        port=port, log_path=workdir / "postgres-exporter.log", ready_path="/metrics",
    )  # fmt: skip


async def query(client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query; AssertionError with Prometheus's error if it fails."""
    response = await client.get("/api/v1/query", params={"query": expr})
    body = response.json()
    assert response.status_code == 200, (expr, body)
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (not NaN: a histogram with no observations)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)
