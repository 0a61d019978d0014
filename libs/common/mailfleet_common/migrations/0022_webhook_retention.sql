-- `mailfleet retention` prunes finished webhook deliveries (their attempts go with them, ON
-- DELETE CASCADE) oldest first; pending ones stay whatever their age.
CREATE INDEX IF NOT EXISTS webhook_deliveries_created_idx ON webhook_deliveries (created_at, id);
