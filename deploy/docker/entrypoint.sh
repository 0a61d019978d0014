#!/bin/sh
# Runs the service this image was built for, or the command given instead
# (`mailfleet migrate`, `mailfleet create-user ...`). exec keeps the service as PID 1, so
# SIGTERM from `docker stop` or Kubernetes reaches it directly and it drains.
set -eu

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

case "${MAILFLEET_IMAGE_SERVICE:-}" in
    mailfleet-api) exec mailfleet api ;;
    mailfleet-dispatcher) exec mailfleet-dispatcher ;;
    mailfleet-sender) exec mailfleet-sender ;;
    mailfleet-tracker) exec mailfleet-tracker ;;
    mailfleet-bouncer) exec mailfleet-bouncer ;;
    mailfleet-webhooks) exec mailfleet-webhooks ;;
    # A capture server reachable only on loopback would be no use in a container.
    mailfleet-sink) exec mailfleet-sink --host 0.0.0.0 ;;
    *) echo "unknown MAILFLEET_IMAGE_SERVICE '${MAILFLEET_IMAGE_SERVICE:-}'" >&2; exit 64 ;;
esac
