-- Tracking: opens, clicks and unsubscribes.

-- Where an unsubscribe from a campaign's message applies: every campaign ('global') or only
-- that campaign ('campaign').
ALTER TABLE campaigns ADD COLUMN unsubscribe_scope text NOT NULL DEFAULT 'global'
    CHECK (unsubscribe_scope IN ('global', 'campaign'));

-- A key unique per recorded occurrence (a tracking hit's id), so a batch delivered twice by
-- the bus is recorded once. NULL for events that are deduplicated elsewhere.
ALTER TABLE events ADD COLUMN event_key text;
CREATE UNIQUE INDEX events_event_key ON events (event_key, occurred_at);

-- Every message to an address, across campaigns: global suppression cancels them all.
CREATE INDEX messages_email_idx ON messages (lower(email));

-- Suppress an address (for one campaign, or every one when `scope` is NULL) and cancel its
-- messages not yet attempted. Cancelled `assigned` messages keep their account_id until the
-- dispatcher's sweep gives their reserved unit back. A message a sender has already claimed
-- (`sending`) is not touched: callers that promise "nothing after this returns" wait for it.
-- Returns the number of messages cancelled.
CREATE FUNCTION suppress_address(address text, scope uuid, why text, origin text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    cancelled integer;
BEGIN
    INSERT INTO suppressions (email, campaign_id, reason, source)
    VALUES (lower(address), scope, why, origin)
    ON CONFLICT (lower(email), coalesce(campaign_id, '00000000-0000-0000-0000-000000000000'))
    DO UPDATE SET expires_at = NULL WHERE suppressions.expires_at IS NOT NULL;

    UPDATE messages
    SET status = 'cancelled', last_error = 'suppressed: ' || why, updated_at = now()
    WHERE lower(email) = lower(address)
      AND status IN ('queued', 'assigned', 'deferred')
      AND (scope IS NULL OR campaign_id = scope);
    GET DIAGNOSTICS cancelled = ROW_COUNT;
    RETURN cancelled;
END
$$;
