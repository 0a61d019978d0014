"""Grafana dashboards and the Kubernetes PrometheusRule, generated from code.

    python deploy/monitoring/generate.py           # (re)write them (`make dashboards`)
    python deploy/monitoring/generate.py --check   # exit 1 if a committed file differs

Dashboards (grafana-foundation-sdk) go to grafana/dashboards/*.json; the PrometheusRule of
deploy/k8s/monitoring is prometheus/alerts.yml wrapped as the Prometheus Operator wants it, so
the two cannot drift. Every query reads one Prometheus data source, chosen in the dashboard's
`datasource` variable. Jobs are named mailfleet-<service> (see prometheus/alerts.yml).
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import DashboardLinkType, DataSourceRef
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DASHBOARDS_DIR = HERE / "grafana" / "dashboards"
ALERTS = HERE / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = REPO / "deploy" / "k8s" / "monitoring" / "prometheusrule.yaml"

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"

Query = tuple[str, str]  # PromQL expression, legend


def _targets(queries: Sequence[Query], *, instant: bool = False) -> list[prometheus.Dataquery]:
    targets = []
    for ref, (expr, legend) in zip("ABCDEFGH", queries, strict=False):
        target = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
        if instant:
            target = target.instant().format(PromQueryFormat.TABLE)
        targets.append(target)
    return targets


def graph(
    title: str, description: str, unit: str, *queries: Query, width: int = 12
) -> timeseries.Panel:
    """A time series panel of one or more queries."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    for target in _targets(queries):
        panel = panel.with_target(target)
    return panel


def single(title: str, description: str, unit: str, expr: str, width: int = 4) -> stat.Panel:
    """A stat panel: one number, its latest value."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(4)
        .graph_mode(BigValueGraphMode.AREA)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
    )
    return panel.with_target(_targets([(expr, "")])[0])


def listing(title: str, description: str, expr: str, width: int = 24) -> table.Panel:
    """A table of the series an instant query returns, one row each."""
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(width)
        .height(8)
        .show_header(True)
    )
    return panel.with_target(_targets([(expr, "")], instant=True)[0])


def quantiles(metric: str, by: str = "", qs: Sequence[float] = (0.5, 0.95, 0.99)) -> list[Query]:
    """histogram_quantile queries of a histogram, optionally per label."""
    labels = f"le, {by}" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket[{RATE}])))",
            f"{prefix}p{round(q * 100)}",
        )
        for q in qs
    ]


def new_dashboard(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["mailfleet"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .link(
            dashboard.DashboardLink("mailfleet")
            .type(DashboardLinkType.DASHBOARDS)
            .tags(["mailfleet"])
            .as_dropdown(True)
            .keep_time(True)
        )
    )


def fleet() -> dashboard.Dashboard:
    sent = 'mailfleet_sender_messages_total{outcome="sent"}'
    return (
        new_dashboard(
            "mailfleet-fleet",
            "mailfleet: fleet overview",
            "Throughput, backlog, latency and errors of the whole fleet.",
        )
        .with_row(dashboard.Row("Now"))
        .with_panel(
            single(
                "Sent per minute",
                "Messages the SMTP servers accepted, over the last rate interval.",
                "short",
                f"sum(rate({sent}[{RATE}])) * 60",
            )
        )
        .with_panel(
            single(
                "Queued",
                "Messages waiting for an account.",
                "short",
                'max(mailfleet_backlog_messages{state="queued"})',
            )
        )
        .with_panel(
            single(
                "Oldest queued",
                "Age of the oldest queued message (0 when nothing is queued).",
                "s",
                "max(mailfleet_backlog_oldest_queued_age_seconds)",
            )
        )
        .with_panel(
            single(
                "Uncertain",
                "Messages that may or may not have been delivered; an operator resolves them "
                "(`mailfleet uncertain list|resolve`).",
                "short",
                'max(mailfleet_backlog_messages{state="uncertain"})',
            )
        )
        .with_panel(
            single(
                "Live senders",
                "Sender replicas alive, as the sender replicas see them.",
                "short",
                "max(mailfleet_sender_replicas_live)",
            )
        )
        .with_panel(
            single(
                "Running campaigns",
                "Campaigns in the running state.",
                "short",
                "max(mailfleet_campaigns_running)",
            )
        )
        .with_row(dashboard.Row("Throughput and backlog"))
        .with_panel(
            graph(
                "Delivery attempts by outcome",
                "Per second: sent (2xx), deferred (4xx, retried), failed (5xx), requeued "
                "(account paused for its configuration), held (server unreachable).",
                "ops",
                (
                    f"sum by (outcome) (rate(mailfleet_sender_messages_total[{RATE}]))",
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Backlog by state",
                "Messages not yet settled, by state.",
                "short",
                ("max by (state) (mailfleet_backlog_messages)", "{{state}}"),
            )
        )
        .with_panel(
            graph(
                "Sendable now",
                "Queued messages the active accounts could take today: the signal to scale "
                "senders on.",
                "short",
                ("max(mailfleet_backlog_sendable_messages)", "sendable"),
                ('max(mailfleet_backlog_messages{state="queued"})', "queued"),
            )
        )
        .with_panel(
            graph(
                "Oldest queued message",
                "How long the oldest queued message has waited.",
                "s",
                ("max(mailfleet_backlog_oldest_queued_age_seconds)", "age"),
            )
        )
        .with_panel(
            graph(
                "Dispatcher assignments",
                "Messages assigned to accounts and send commands published, per second.",
                "ops",
                (f"sum(rate(mailfleet_dispatcher_messages_assigned_total[{RATE}]))", "assigned"),
                (
                    f"sum(rate(mailfleet_dispatcher_send_batches_published_total[{RATE}]))",
                    "commands",
                ),
            )
        )
        .with_panel(
            graph(
                "API requests by status",
                "HTTP requests the API answered, per second.",
                "reqps",
                (f"sum by (status) (rate(mailfleet_api_requests_total[{RATE}]))", "{{status}}"),
            )
        )
        .with_row(dashboard.Row("Latency"))
        .with_panel(
            graph(
                "Delivery latency",
                "From enqueue to the SMTP server accepting the message.",
                "s",
                *quantiles("mailfleet_delivery_latency_seconds"),
            )
        )
        .with_panel(
            graph(
                "SMTP transaction time",
                "MAIL FROM to the reply to DATA.",
                "s",
                *quantiles("mailfleet_sender_smtp_seconds"),
            )
        )
        .with_panel(
            graph(
                "Assignment tick",
                "One dispatcher tick, commit and publish included.",
                "s",
                *quantiles("mailfleet_dispatcher_tick_seconds", qs=(0.5, 0.99)),
            )
        )
        .with_panel(
            graph(
                "API request time",
                "Time to answer an HTTP request.",
                "s",
                *quantiles("mailfleet_api_request_seconds", qs=(0.5, 0.99)),
            )
        )
        .with_row(dashboard.Row("Errors"))
        .with_panel(
            graph(
                "SMTP refusals",
                "Delivery attempts answered 4xx (deferred) or 5xx (failed), per second.",
                "ops",
                (
                    "sum by (outcome) (rate(mailfleet_sender_messages_total"
                    f'{{outcome=~"deferred|failed"}}[{RATE}]))',
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Dispatcher errors",
                "Failed ticks and sweeps and unpublished commands, per second.",
                "ops",
                (f"sum(rate(mailfleet_dispatcher_tick_errors_total[{RATE}]))", "tick errors"),
                (f"sum(rate(mailfleet_dispatcher_sweep_errors_total[{RATE}]))", "sweep errors"),
                (
                    f"sum(rate(mailfleet_dispatcher_send_batch_failures_total[{RATE}]))",
                    "unpublished commands",
                ),
            )
        )
        .with_panel(
            graph(
                "SMTP sessions opened",
                "Per second, by outcome: ok, unreachable (the account waits and tries again), "
                "config (the account is paused), exhausted (out of file descriptors).",
                "ops",
                (
                    f"sum by (outcome) (rate(mailfleet_sender_smtp_connects_total[{RATE}]))",
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Replicas up",
                "Scraped replicas that answer, per service.",
                "short",
                ('sum by (job) (up{job=~"mailfleet-.*"})', "{{job}}"),
            )
        )
    )


def accounts() -> dashboard.Dashboard:
    return (
        new_dashboard(
            "mailfleet-accounts",
            "mailfleet: accounts",
            "Usage against daily limits, paused accounts, bounce and complaint rates.",
        )
        .with_panel(
            single(
                "Active accounts",
                "Accounts that may send.",
                "short",
                'max(mailfleet_accounts{status="active"})',
            )
        )
        .with_panel(
            single(
                "Paused accounts",
                "Accounts paused by an operator, the sender or the bouncer.",
                "short",
                'max(mailfleet_accounts{status="paused"})',
            )
        )
        .with_panel(
            single(
                "Sent today",
                "Messages the fleet's accounts sent today.",
                "short",
                "sum(mailfleet_account_sent_today)",
            )
        )
        .with_panel(
            single(
                "Daily capacity used",
                "Sent today against the sum of the accounts' effective daily limits.",
                "percentunit",
                "sum(mailfleet_account_sent_today) / sum(mailfleet_account_daily_limit)",
            )
        )
        .with_panel(
            single(
                "Suppressed addresses",
                "Addresses that receive nothing more.",
                "short",
                "max(mailfleet_suppressions)",
            )
        )
        .with_panel(
            single(
                "Accounts by status",
                "Every account, by status.",
                "short",
                "sum(max by (status) (mailfleet_accounts))",
            )
        )
        .with_panel(
            listing(
                "Paused accounts and why",
                "One row per paused account (label account is the account id).",
                "max by (account, reason) (mailfleet_account_paused)",
            )
        )
        .with_panel(
            graph(
                "Daily limit used, top 20",
                "Sent today over the effective daily limit (warm-up included), per account.",
                "percentunit",
                (
                    "topk(20, max by (account) (mailfleet_account_sent_today)"
                    " / max by (account) (mailfleet_account_daily_limit))",
                    "{{account}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Sent today and limits, fleet",
                "Messages sent today and the sum of the effective daily limits.",
                "short",
                ("sum(mailfleet_account_sent_today)", "sent today"),
                ("sum(mailfleet_account_daily_limit)", "daily limits"),
            )
        )
        .with_panel(
            graph(
                "Bounce rate, top 10",
                "Hard bounces over the sends in the bouncer's window; the account is paused "
                "above the threshold.",
                "percentunit",
                ("topk(10, max by (account) (mailfleet_account_bounce_rate))", "{{account}}"),
                ('max(mailfleet_account_rate_max{kind="bounce"})', "threshold"),
            )
        )
        .with_panel(
            graph(
                "Complaint rate, top 10",
                "Complaints over the sends in the bouncer's window; the account is paused "
                "above the threshold.",
                "percentunit",
                ("topk(10, max by (account) (mailfleet_account_complaint_rate))", "{{account}}"),
                ('max(mailfleet_account_rate_max{kind="complaint"})', "threshold"),
            )
        )
        .with_panel(
            graph(
                "Sends by account, top 10",
                "Messages accepted per second, per account.",
                "ops",
                (
                    "topk(10, sum by (account) (rate(mailfleet_sender_messages_total"
                    f'{{outcome="sent"}}[{RATE}])))',
                    "{{account}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Accounts by status",
                "Accounts per status over time.",
                "short",
                ("max by (status) (mailfleet_accounts)", "{{status}}"),
            )
        )
    )


def tracking() -> dashboard.Dashboard:
    return (
        new_dashboard(
            "mailfleet-tracking",
            "mailfleet: tracking and bouncer",
            "Opens, clicks and unsubscribes through the tracker; mailboxes read by the bouncer.",
        )
        .with_row(dashboard.Row("Tracker"))
        .with_panel(
            graph(
                "Tracker requests",
                "Requests to tracking URLs per second, by route and result.",
                "reqps",
                (
                    f"sum by (route, result) (rate(mailfleet_tracker_requests_total[{RATE}]))",
                    "{{route}} {{result}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Hits accepted and published",
                "Hits taken into the buffer and confirmed by the broker, per second.",
                "ops",
                (f"sum by (kind) (rate(mailfleet_tracker_hits_total[{RATE}]))", "{{kind}}"),
                (
                    f"sum(rate(mailfleet_tracker_hits_published_total[{RATE}]))",
                    "published",
                ),
            )
        )
        .with_panel(
            graph(
                "Buffer and losses",
                "Hits waiting for the broker's confirm; hits dropped (buffer full) and batches "
                "not confirmed (retried) over the interval.",
                "short",
                ("sum(mailfleet_tracker_hits_buffered)", "buffered"),
                (f"sum(increase(mailfleet_tracker_events_dropped_total[{RATE}]))", "dropped"),
                (
                    f"sum(increase(mailfleet_tracker_publish_failures_total[{RATE}]))",
                    "unconfirmed batches",
                ),
            )
        )
        .with_panel(
            graph(
                "Broker connection",
                "1 while a tracker replica's publisher is connected to RabbitMQ.",
                "short",
                ("min by (instance) (mailfleet_tracker_broker_connected)", "{{instance}}"),
            )
        )
        .with_panel(
            graph(
                "Hit to recorded",
                "From a tracker hit to its row in the database, by kind.",
                "s",
                *quantiles("mailfleet_tracking_record_latency_seconds", by="kind", qs=(0.5, 0.99)),
            )
        )
        .with_panel(
            graph(
                "Hits recorded",
                "Hits the recorder received, by kind and outcome (recorded, duplicate, "
                "unknown-message), per second.",
                "ops",
                (
                    "sum by (kind, outcome) "
                    f"(rate(mailfleet_dispatcher_tracking_hits_total[{RATE}]))",
                    "{{kind}} {{outcome}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Unsubscribe time",
                "Time to unsubscribe, the wait for messages being sent included.",
                "s",
                *quantiles("mailfleet_tracker_unsubscribe_seconds", qs=(0.5, 0.99)),
            )
        )
        .with_row(dashboard.Row("Bouncer"))
        .with_panel(
            graph(
                "Reports read",
                "Messages read from mailboxes per second, by kind and result.",
                "ops",
                (
                    f"sum by (kind, result) (rate(mailfleet_bouncer_reports_total[{RATE}]))",
                    "{{kind}} {{result}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Actions",
                "What reports caused: suppressions, soft bounces counted, accounts paused.",
                "short",
                (
                    f"sum by (action) (increase(mailfleet_bouncer_actions_total[{RATE}]))",
                    "{{action}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Mailbox errors",
                "Mailbox polls that failed, by stage, over the interval.",
                "short",
                (
                    f"sum by (stage) (increase(mailfleet_bouncer_mailbox_errors_total[{RATE}]))",
                    "{{stage}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Mailboxes owned",
                "Mailboxes each bouncer replica reads.",
                "short",
                ("sum by (instance) (mailfleet_bouncer_mailboxes_owned)", "{{instance}}"),
            )
        )
        .with_panel(
            graph(
                "Poll time",
                "Reading and processing one mailbox's new messages.",
                "s",
                *quantiles("mailfleet_bouncer_poll_seconds", qs=(0.5, 0.99)),
            )
        )
    )


def infrastructure() -> dashboard.Dashboard:
    return (
        new_dashboard(
            "mailfleet-infrastructure",
            "mailfleet: RabbitMQ and PostgreSQL",
            "RabbitMQ (rabbitmq_prometheus plugin, job rabbitmq) and PostgreSQL "
            "(postgres_exporter, job postgres) basics.",
        )
        .with_row(dashboard.Row("RabbitMQ"))
        .with_panel(
            graph(
                "Queued messages",
                "Messages ready for a consumer and delivered but not yet acknowledged.",
                "short",
                ("sum(rabbitmq_queue_messages_ready)", "ready"),
                ("sum(rabbitmq_queue_messages_unacked)", "unacked"),
            )
        )
        .with_panel(
            graph(
                "Message rates",
                "Messages published to and delivered by the broker, per second.",
                "ops",
                (f"sum(rate(rabbitmq_global_messages_received_total[{RATE}]))", "published"),
                (f"sum(rate(rabbitmq_global_messages_delivered_total[{RATE}]))", "delivered"),
                (f"sum(rate(rabbitmq_global_messages_acknowledged_total[{RATE}]))", "acked"),
            )
        )
        .with_panel(
            graph(
                "Connections, channels, consumers",
                "Open on the broker.",
                "short",
                ("sum(rabbitmq_connections)", "connections"),
                ("sum(rabbitmq_channels)", "channels"),
                ("sum(rabbitmq_consumers)", "consumers"),
                ("sum(rabbitmq_queues)", "queues"),
            )
        )
        .with_panel(
            graph(
                "Memory and disk",
                "Resident memory against the high watermark; free disk against its limit.",
                "bytes",
                ("sum(rabbitmq_process_resident_memory_bytes)", "memory"),
                ("sum(rabbitmq_resident_memory_limit_bytes)", "memory limit"),
                ("min(rabbitmq_disk_space_available_bytes)", "disk free"),
                ("max(rabbitmq_disk_space_available_limit_bytes)", "disk limit"),
            )
        )
        .with_panel(
            graph(
                "Alarms",
                "1 while a resource alarm blocks publishers.",
                "short",
                ("max(rabbitmq_alarms_memory_used_watermark)", "memory"),
                ("max(rabbitmq_alarms_free_disk_space_watermark)", "disk"),
                ("max(rabbitmq_alarms_file_descriptor_limit)", "file descriptors"),
            )
        )
        .with_row(dashboard.Row("PostgreSQL"))
        .with_panel(
            graph(
                "Up",
                "1 while the exporter can query PostgreSQL.",
                "short",
                ("min(pg_up)", "up"),
            )
        )
        .with_panel(
            graph(
                "Connections",
                "Backends by state, against max_connections.",
                "short",
                ("sum by (state) (pg_stat_activity_count)", "{{state}}"),
                ("max(pg_settings_max_connections)", "max_connections"),
            )
        )
        .with_panel(
            graph(
                "Transactions",
                "Commits and rollbacks per second, by database.",
                "ops",
                (
                    f"sum by (datname) (rate(pg_stat_database_xact_commit[{RATE}]))",
                    "{{datname}} commit",
                ),
                (
                    f"sum by (datname) (rate(pg_stat_database_xact_rollback[{RATE}]))",
                    "{{datname}} rollback",
                ),
            )
        )
        .with_panel(
            graph(
                "Longest transaction",
                "Age of the oldest open transaction.",
                "s",
                ("max(pg_stat_activity_max_tx_duration)", "longest"),
            )
        )
        .with_panel(
            graph(
                "Locks and deadlocks",
                "Locks held by mode; deadlocks over the interval.",
                "short",
                ("sum by (mode) (pg_locks_count)", "{{mode}}"),
                (f"sum(increase(pg_stat_database_deadlocks[{RATE}]))", "deadlocks"),
            )
        )
        .with_panel(
            graph(
                "Database size",
                "On disk, by database.",
                "bytes",
                ("sum by (datname) (pg_database_size_bytes)", "{{datname}}"),
            )
        )
    )


DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "fleet": fleet,
    "accounts": accounts,
    "tracking": tracking,
    "infrastructure": infrastructure,
}


def dashboard_json(build: Callable[[], dashboard.Dashboard]) -> str:
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def prometheus_rule(alerts_yaml: str) -> str:
    """alerts.yml as a PrometheusRule of the Prometheus Operator."""
    rule: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "mailfleet",
            "namespace": "mailfleet",
            "labels": {"app.kubernetes.io/part-of": "mailfleet"},
        },
        "spec": yaml.safe_load(alerts_yaml),
    }
    header = (
        "# Generated from deploy/monitoring/prometheus/alerts.yml by\n"
        "# deploy/monitoring/generate.py (make dashboards): do not edit.\n"
    )
    # Wide lines: expressions and descriptions stay on one line each, as in alerts.yml.
    body: str = yaml.safe_dump(rule, sort_keys=False, width=4096, allow_unicode=True)
    return header + body


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    files = {
        DASHBOARDS_DIR / f"{name}.json": dashboard_json(build) for name, build in DASHBOARDS.items()
    }
    files[PROMETHEUS_RULE] = prometheus_rule(ALERTS.read_text())
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is not up to date"
    )
    args = parser.parse_args(argv)
    stale = []
    for path, content in outputs().items():
        current = path.read_text() if path.exists() else None
        if current == content:
            continue
        stale.append(path.relative_to(REPO))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")  # noqa: T201
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
