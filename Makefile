# mailfleet: `make up` runs it on this machine, `make test` is the test suite.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PYTEST_ARGS ?=

.PHONY: up down test lint bench bench-tracker bench-bouncer sync

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
	$(UV) run --frozen pytest $(PYTEST_ARGS)

lint: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy libs/common/mailfleet_common services/*/mailfleet_* tools/sink/mailfleet_sink

# The delivery benchmark; it prints its figures.
bench: sync
	$(UV) run --frozen python -m bench.delivery

# The tracker benchmark (wrk against the open pixel); installs wrk if missing.
bench-tracker: sync
	@source deploy/local/services.sh && ensure_command wrk
	$(UV) run --frozen python -m bench.tracker

# The bouncer benchmark (a mailbox of DSNs in a real Dovecot); installs Dovecot if missing.
bench-bouncer: sync
	@source deploy/local/services.sh && ensure_dovecot
	$(UV) run --frozen python -m bench.bouncer
