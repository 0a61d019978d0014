-- An account's bounce and complaint rates over the window the bouncer judges them by: its
-- newest `window_sends` sends since rates_since (resuming an account starts a fresh window).
-- One definition for the bouncer, which pauses an account over its limits, and the
-- dispatcher's fleet gauges, which export the same rates. A plain SQL function, so the planner
-- inlines it: over every account it is one set-based statement, each account reading its own
-- slice of messages_account_sent_idx.
CREATE FUNCTION account_rates(a accounts, window_sends integer)
RETURNS TABLE (sends bigint, hard_bounces bigint, complaints bigint)
LANGUAGE sql STABLE AS $$
    SELECT count(*),
           count(*) FILTER (WHERE w.bounce = 'hard'),
           count(*) FILTER (WHERE w.complained_at IS NOT NULL)
    FROM (
        SELECT m.bounce, m.complained_at FROM messages m
        WHERE m.account_id = a.id AND m.sent_at IS NOT NULL AND m.sent_at > a.rates_since
        ORDER BY m.sent_at DESC LIMIT window_sends
    ) AS w
$$;

-- The dispatcher's fleet gauges read, every interval, the rates of every account and the age
-- of each running campaign's oldest queued message. Both from indexes alone:
-- - the window's bounce and complaint marks ride along in the index of the window itself,
--   so the rates of 10,000 accounts need no visit to the table (the marks change rarely: the
--   bouncer sets them once per message);
-- - a queued message's enqueueing time, by campaign. Only rows in `queued` are in it, so the
--   assignment, claims and outcomes (none of which writes a queued row) do not maintain it.
-- Both are built while the table is locked for writes: on a large table, migrate at a quiet
-- time.
DROP INDEX messages_account_sent_idx;
CREATE INDEX messages_account_sent_idx ON messages (account_id, sent_at DESC)
    INCLUDE (bounce, complained_at) WHERE sent_at IS NOT NULL;
CREATE INDEX messages_queued_age_idx ON messages (campaign_id, created_at)
    WHERE status = 'queued';
