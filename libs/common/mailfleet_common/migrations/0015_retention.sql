-- Indexes `mailfleet retention` walks to prune old rows in small batches, oldest first,
-- without reading the rest of each table. Built inside the migration's transaction, so
-- writes to these tables wait for the build: a few seconds per million rows.
CREATE INDEX send_attempts_attempted_idx ON send_attempts (attempted_at, id);
CREATE INDEX inbound_reports_received_idx ON inbound_reports (received_at, id);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
