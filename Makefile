# mailfleet: `make up` runs it on this machine, `make test` is the test suite.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PYTEST_ARGS ?=

.PHONY: up down test lint bench bench-fleet bench-tracker bench-bouncer bench-dispatch chaos sync
.PHONY: dashboards monitoring monitoring-down
.PHONY: bench-retention bench-transactional
.PHONY: bench-metrics
.PHONY: bench-analytics
.PHONY: bench-webhooks
.PHONY: bench-messages

# Install, start PostgreSQL and RabbitMQ if needed, migrate, run every service in the background.
up:
	@deploy/local/up

# Stop what `make up` started.
down:
	@deploy/local/down

sync:
	@$(UV) sync --frozen --quiet

# The whole suite, against the local PostgreSQL and RabbitMQ; installs Dovecot and Postfix if
# missing (the bouncer tests start their own, see tests/bouncer/servers.py), and Redis (the
# login throttle tests), started if it does not answer.
test: sync
	@source deploy/local/services.sh && ensure_dovecot && ensure_postfix && ensure_redis
	@source deploy/local/services.sh && ensure_prometheus
	$(UV) run --frozen pytest $(PYTEST_ARGS)

lint: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy libs/common/mailfleet_common services/*/mailfleet_* tools/sink/mailfleet_sink

# The delivery benchmark; it prints its figures.
bench: sync
	$(UV) run --frozen python -m bench.delivery

# The fleet benchmark: 10,000 messages over 50, 1,000 and 10,000 accounts; one JSON line.
bench-fleet: sync
	$(UV) run --frozen python -m bench.fleet

# p50/p95/p99 from 202 to SMTP-accepted of transactional sends while a 100k campaign drains
bench-transactional: sync
	$(UV) run --frozen python -m bench.transactional

# The tracker benchmark (wrk against the open pixel); installs wrk if missing.
bench-tracker: sync
	@source deploy/local/services.sh && ensure_command wrk
	$(UV) run --frozen python -m bench.tracker

# The bouncer benchmark (a mailbox of DSNs in a real Dovecot); installs Dovecot if missing.
bench-bouncer: sync
	@source deploy/local/services.sh && ensure_dovecot
	$(UV) run --frozen python -m bench.bouncer

# The assignment tick at 50, 1,000 and 10,000 accounts (a throwaway database); one JSON line.
bench-dispatch: sync
	$(UV) run --frozen python -m bench.dispatch

# `mailfleet retention` over millions of rows (a throwaway database) beside a writer; one JSON line.
bench-retention: sync
	$(UV) run --frozen python -m bench.retention $(RETENTION_ARGS)

# The fleet gauges and the dispatcher's /metrics at 1,000 and 10,000 accounts (a throwaway
# database); one JSON line.
bench-metrics: sync
	$(UV) run --frozen python -m bench.metrics_scale

# Read latency of the analytics, campaign and stats routes over 10M messages and 30M events
# (a database built once by bench.dataset and kept); one JSON line.
bench-analytics: sync
	$(UV) run --frozen python -m bench.analytics $(ANALYTICS_ARGS)
# Webhook deliveries per second from the outbox to a local receiver (a throwaway database); one
# JSON line.
bench-webhooks: sync
	$(UV) run --frozen python -m bench.webhooks $(WEBHOOKS_ARGS)

# GET /api/messages and /api/messages/{id} at 10M messages, and 1M-row exports' memory; one
# JSON line (builds, once, a database kept for the next run).
bench-messages: sync
	$(UV) run --frozen python -m bench.messages_api $(MESSAGES_ARGS)

# Delivery through faults (processes killed, RabbitMQ and PostgreSQL restarted) on a private
# PostgreSQL cluster and RabbitMQ node it starts itself; prints one JSON line. Not in `make test`.
chaos: sync
	$(UV) run --frozen python -m bench.chaos $(CHAOS_ARGS)

# Grafana dashboards (deploy/monitoring/grafana/dashboards) and the Kubernetes PrometheusRule
# (deploy/k8s/monitoring), generated from deploy/monitoring/generate.py and alerts.yml.
dashboards: sync
	$(UV) run --frozen python deploy/monitoring/generate.py

# Prometheus and Alertmanager (Debian packages) against the `make up` stack, alert rules loaded.
monitoring: sync
	@deploy/local/monitoring up

monitoring-down:
	@deploy/local/monitoring down
