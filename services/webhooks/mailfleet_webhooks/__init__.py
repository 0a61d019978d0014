"""mailfleet webhooks: delivers the outbox of webhook events to the users' endpoints."""
