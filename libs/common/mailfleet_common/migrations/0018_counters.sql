-- Counters for analytics, campaign details and the admin stats, kept as messages change and
-- events are recorded, so that no read aggregates `messages` or `events`.
--
-- Writers never update a shared row (one row per campaign and hour would serialize every
-- writer of that campaign): statement-level triggers on messages and events append their
-- net changes to counter_deltas, one row per (hour, campaign, account) per statement, and
-- fold_counters, run every few seconds by one dispatcher at a time, moves them into
-- counter_buckets. A read adds the deltas not yet folded to the buckets in one statement
-- (one snapshot; a fold deletes the deltas and adds them to the buckets in one
-- transaction), so what it returns is exact, folded or not.
--
-- Kept in counter_buckets, keyed by (campaign_id, account_id, bucket), where the zero uuid
-- means "every campaign" or "every account" and '-infinity' means "all time":
--   (C, 0, hour), (0, A, hour), (0, 0, hour)          events by UTC hour
--   (C, A, -inf), (C, 0, -inf), (0, A, -inf), (0, 0, -inf)  all time: events and messages
-- Event counters count recorded events: `sent`, `failed`, `deferred` (attempts),
-- `bounces` (`hard_bounces` among them), `complaints`, `replies`, `opens`, `clicks` (and
-- `human_*`: without machine hits); `unique_*` and `unsubscribes` count messages, each in the
-- bucket of its first such event as recorded. `messages_*` count messages by their status
-- now and by what came back for them (the columns set by the bouncer). Retention dropping
-- old events leaves the counters as they are.

CREATE TABLE counter_buckets (
    campaign_id uuid NOT NULL,
    account_id  uuid NOT NULL,
    bucket      timestamptz NOT NULL,
    sent                  bigint NOT NULL DEFAULT 0,
    failed                bigint NOT NULL DEFAULT 0,
    deferred              bigint NOT NULL DEFAULT 0,
    bounces               bigint NOT NULL DEFAULT 0,
    hard_bounces          bigint NOT NULL DEFAULT 0,
    complaints            bigint NOT NULL DEFAULT 0,
    replies               bigint NOT NULL DEFAULT 0,
    unsubscribes          bigint NOT NULL DEFAULT 0,
    opens                 bigint NOT NULL DEFAULT 0,
    unique_opens          bigint NOT NULL DEFAULT 0,
    human_opens           bigint NOT NULL DEFAULT 0,
    unique_human_opens    bigint NOT NULL DEFAULT 0,
    clicks                bigint NOT NULL DEFAULT 0,
    unique_clicks         bigint NOT NULL DEFAULT 0,
    human_clicks          bigint NOT NULL DEFAULT 0,
    unique_human_clicks   bigint NOT NULL DEFAULT 0,
    messages_queued       bigint NOT NULL DEFAULT 0,
    messages_assigned     bigint NOT NULL DEFAULT 0,
    messages_sending      bigint NOT NULL DEFAULT 0,
    messages_sent         bigint NOT NULL DEFAULT 0,
    messages_deferred     bigint NOT NULL DEFAULT 0,
    messages_failed       bigint NOT NULL DEFAULT 0,
    messages_uncertain    bigint NOT NULL DEFAULT 0,
    messages_cancelled    bigint NOT NULL DEFAULT 0,
    messages_hard_bounced bigint NOT NULL DEFAULT 0,
    messages_soft_bounced bigint NOT NULL DEFAULT 0,
    messages_complained   bigint NOT NULL DEFAULT 0,
    messages_replied      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, account_id, bucket)
);

-- Append-only: written by the triggers, emptied by fold_counters. `bucket` is the UTC hour
-- of the events counted, '-infinity' for changes of messages. Same counter columns.
CREATE TABLE counter_deltas (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    LIKE counter_buckets INCLUDING DEFAULTS
);
-- A message not yet assigned has no account; events of an account-wide kind no campaign.
ALTER TABLE counter_deltas ALTER COLUMN campaign_id DROP NOT NULL,
    ALTER COLUMN account_id DROP NOT NULL;

-- The messages already opened, clicked (also by a person: '-human') or unsubscribed from:
-- an event whose (message, kind) is inserted here is its message's first, counted in the
-- unique_* counters. The primary key settles concurrent writers: the second waits for the
-- first to commit and then inserts nothing.
CREATE TABLE engagement_firsts (
    message_id bigint NOT NULL,
    kind       text NOT NULL,
    PRIMARY KEY (message_id, kind)
);

-- Net change of the message counters by the rows of one statement on messages: +1 for each
-- row as it is now, -1 for each as it was; keys whose changes cancel out write nothing.
CREATE FUNCTION count_message_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO counter_deltas (bucket, campaign_id, account_id, messages_queued,
        messages_assigned, messages_sending, messages_sent, messages_deferred, messages_failed,
        messages_uncertain, messages_cancelled, messages_hard_bounced, messages_soft_bounced,
        messages_complained, messages_replied)
    SELECT '-infinity', campaign_id, account_id, sum(sign * (status = 'queued')::int),
           sum(sign * (status = 'assigned')::int), sum(sign * (status = 'sending')::int),
           sum(sign * (status = 'sent')::int), sum(sign * (status = 'deferred')::int),
           sum(sign * (status = 'failed')::int), sum(sign * (status = 'uncertain')::int),
           sum(sign * (status = 'cancelled')::int),
           sum(sign * (bounce IS NOT DISTINCT FROM 'hard')::int),
           sum(sign * (bounce IS NOT DISTINCT FROM 'soft')::int),
           sum(sign * (complained_at IS NOT NULL)::int), sum(sign * (replied_at IS NOT NULL)::int)
    FROM (
        SELECT campaign_id, account_id, status, bounce, complained_at, replied_at,
               CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END AS sign
        FROM changed_rows
    ) c
    GROUP BY campaign_id, account_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION count_message_updates() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO counter_deltas (bucket, campaign_id, account_id, messages_queued,
        messages_assigned, messages_sending, messages_sent, messages_deferred, messages_failed,
        messages_uncertain, messages_cancelled, messages_hard_bounced, messages_soft_bounced,
        messages_complained, messages_replied)
    SELECT * FROM (
        SELECT '-infinity'::timestamptz, campaign_id, account_id,
               sum(sign * (status = 'queued')::int) AS q,
               sum(sign * (status = 'assigned')::int) AS a,
               sum(sign * (status = 'sending')::int) AS s,
               sum(sign * (status = 'sent')::int) AS t,
               sum(sign * (status = 'deferred')::int) AS d,
               sum(sign * (status = 'failed')::int) AS f,
               sum(sign * (status = 'uncertain')::int) AS u,
               sum(sign * (status = 'cancelled')::int) AS c,
               sum(sign * (bounce IS NOT DISTINCT FROM 'hard')::int) AS h,
               sum(sign * (bounce IS NOT DISTINCT FROM 'soft')::int) AS o,
               sum(sign * (complained_at IS NOT NULL)::int) AS p,
               sum(sign * (replied_at IS NOT NULL)::int) AS r
        FROM (
            SELECT campaign_id, account_id, status, bounce, complained_at, replied_at, 1 AS sign
            FROM new_rows
            UNION ALL
            SELECT campaign_id, account_id, status, bounce, complained_at, replied_at, -1
            FROM old_rows
        ) c
        GROUP BY campaign_id, account_id
    ) n
    -- Most updates (a claim's heartbeat, an error text) move no counter.
    WHERE (q, a, s, t, d, f, u, c, h, o, p, r) <> (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_counted_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT
    EXECUTE FUNCTION count_message_rows();
CREATE TRIGGER messages_counted_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT
    EXECUTE FUNCTION count_message_rows();
CREATE TRIGGER messages_counted_update AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION count_message_updates();

-- The event counters of the events one statement inserted, by UTC hour, campaign and account
-- (only rows actually inserted: a redelivered batch skipped by ON CONFLICT counts nothing).
CREATE FUNCTION count_event_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH counted AS (
        SELECT occurred_at, type, campaign_id, message_id, account_id,
               type IN ('opened', 'clicked')
                   AND NOT coalesce((data->>'machine')::boolean, false) AS human,
               data->>'bounce' AS bounce
        FROM new_rows
        WHERE type IN ('sent', 'failed', 'deferred', 'bounced', 'complained', 'replied',
                       'unsubscribed', 'opened', 'clicked')
    ), marks AS (
        SELECT c.message_id, k.kind, c.occurred_at, c.campaign_id, c.account_id
        FROM counted c
        CROSS JOIN LATERAL (VALUES (c.type), (CASE WHEN c.human THEN c.type || '-human' END))
            AS k (kind)
        WHERE c.type IN ('opened', 'clicked', 'unsubscribed') AND c.message_id IS NOT NULL
          AND k.kind IS NOT NULL
    ), firsts AS (
        INSERT INTO engagement_firsts (message_id, kind)
        SELECT DISTINCT message_id, kind FROM marks
        ON CONFLICT DO NOTHING
        RETURNING message_id, kind
    ), first_events AS (
        -- Each new first counts in the bucket of its earliest event of this statement.
        SELECT DISTINCT ON (m.message_id, m.kind) m.kind, m.occurred_at, m.campaign_id,
               m.account_id
        FROM firsts f JOIN marks m USING (message_id, kind)
        ORDER BY m.message_id, m.kind, m.occurred_at
    ), tallied AS (
        SELECT occurred_at, campaign_id, account_id, type AS what, human, bounce FROM counted
        UNION ALL
        SELECT occurred_at, campaign_id, account_id, 'first:' || kind, false, NULL
        FROM first_events
    )
    INSERT INTO counter_deltas (bucket, campaign_id, account_id, sent, failed, deferred,
        bounces, hard_bounces, complaints, replies, unsubscribes, opens, unique_opens,
        human_opens, unique_human_opens, clicks, unique_clicks, human_clicks,
        unique_human_clicks)
    SELECT date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
           campaign_id, account_id,
           count(*) FILTER (WHERE what = 'sent'), count(*) FILTER (WHERE what = 'failed'),
           count(*) FILTER (WHERE what = 'deferred'), count(*) FILTER (WHERE what = 'bounced'),
           count(*) FILTER (WHERE what = 'bounced' AND bounce = 'hard'),
           count(*) FILTER (WHERE what = 'complained'), count(*) FILTER (WHERE what = 'replied'),
           count(*) FILTER (WHERE what = 'first:unsubscribed'),
           count(*) FILTER (WHERE what = 'opened'),
           count(*) FILTER (WHERE what = 'first:opened'),
           count(*) FILTER (WHERE what = 'opened' AND human),
           count(*) FILTER (WHERE what = 'first:opened-human'),
           count(*) FILTER (WHERE what = 'clicked'),
           count(*) FILTER (WHERE what = 'first:clicked'),
           count(*) FILTER (WHERE what = 'clicked' AND human),
           count(*) FILTER (WHERE what = 'first:clicked-human')
    FROM tallied
    GROUP BY 1, 2, 3;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_counted AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION count_event_rows();

-- Move up to `max_rows` deltas (NULL: all) into counter_buckets; returns how many moved.
-- One caller at a time (the others return 0 at once): two folds would upsert the same
-- bucket rows in different orders. Safe to repeat: a delta moves once, deleted as it is
-- added.
CREATE FUNCTION fold_counters(max_rows integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7165074649429406323) THEN  -- "counters"
        RETURN 0;
    END IF;
    WITH moved AS (
        DELETE FROM counter_deltas
        WHERE id IN (SELECT id FROM counter_deltas ORDER BY id LIMIT max_rows)
        RETURNING *
    ), rolled AS (
        SELECT CASE WHEN grouping(campaign_id) = 1 THEN '00000000-0000-0000-0000-000000000000'
                    ELSE campaign_id END AS campaign_id,
               CASE WHEN grouping(account_id) = 1 THEN '00000000-0000-0000-0000-000000000000'
                    ELSE account_id END AS account_id,
               CASE WHEN grouping(bucket) = 1 THEN '-infinity' ELSE bucket END AS bucket,
               sum(sent) AS sent, sum(failed) AS failed, sum(deferred) AS deferred,
               sum(bounces) AS bounces, sum(hard_bounces) AS hard_bounces,
               sum(complaints) AS complaints, sum(replies) AS replies,
               sum(unsubscribes) AS unsubscribes, sum(opens) AS opens,
               sum(unique_opens) AS unique_opens, sum(human_opens) AS human_opens,
               sum(unique_human_opens) AS unique_human_opens, sum(clicks) AS clicks,
               sum(unique_clicks) AS unique_clicks, sum(human_clicks) AS human_clicks,
               sum(unique_human_clicks) AS unique_human_clicks,
               sum(messages_queued) AS messages_queued,
               sum(messages_assigned) AS messages_assigned,
               sum(messages_sending) AS messages_sending, sum(messages_sent) AS messages_sent,
               sum(messages_deferred) AS messages_deferred,
               sum(messages_failed) AS messages_failed,
               sum(messages_uncertain) AS messages_uncertain,
               sum(messages_cancelled) AS messages_cancelled,
               sum(messages_hard_bounced) AS messages_hard_bounced,
               sum(messages_soft_bounced) AS messages_soft_bounced,
               sum(messages_complained) AS messages_complained,
               sum(messages_replied) AS messages_replied
        FROM moved
        GROUP BY GROUPING SETS ((bucket, campaign_id), (bucket, account_id), (bucket),
                                (campaign_id, account_id), (campaign_id), (account_id), ())
        -- By hour: events only (message deltas are all '-infinity'); a NULL campaign or
        -- account is kept only where every campaign or account is summed. Grouping by
        -- nothing gives a row even when there was nothing to fold.
        HAVING count(*) > 0
           AND (grouping(bucket) = 1 OR bucket > '-infinity')
           AND (grouping(campaign_id) = 1 OR campaign_id IS NOT NULL)
           AND (grouping(account_id) = 1 OR account_id IS NOT NULL)
    ), stored AS (
        INSERT INTO counter_buckets AS b
        SELECT * FROM rolled ORDER BY campaign_id, account_id, bucket
        ON CONFLICT (campaign_id, account_id, bucket) DO UPDATE SET
            sent = b.sent + excluded.sent, failed = b.failed + excluded.failed,
            deferred = b.deferred + excluded.deferred, bounces = b.bounces + excluded.bounces,
            hard_bounces = b.hard_bounces + excluded.hard_bounces,
            complaints = b.complaints + excluded.complaints,
            replies = b.replies + excluded.replies,
            unsubscribes = b.unsubscribes + excluded.unsubscribes,
            opens = b.opens + excluded.opens,
            unique_opens = b.unique_opens + excluded.unique_opens,
            human_opens = b.human_opens + excluded.human_opens,
            unique_human_opens = b.unique_human_opens + excluded.unique_human_opens,
            clicks = b.clicks + excluded.clicks,
            unique_clicks = b.unique_clicks + excluded.unique_clicks,
            human_clicks = b.human_clicks + excluded.human_clicks,
            unique_human_clicks = b.unique_human_clicks + excluded.unique_human_clicks,
            messages_queued = b.messages_queued + excluded.messages_queued,
            messages_assigned = b.messages_assigned + excluded.messages_assigned,
            messages_sending = b.messages_sending + excluded.messages_sending,
            messages_sent = b.messages_sent + excluded.messages_sent,
            messages_deferred = b.messages_deferred + excluded.messages_deferred,
            messages_failed = b.messages_failed + excluded.messages_failed,
            messages_uncertain = b.messages_uncertain + excluded.messages_uncertain,
            messages_cancelled = b.messages_cancelled + excluded.messages_cancelled,
            messages_hard_bounced = b.messages_hard_bounced + excluded.messages_hard_bounced,
            messages_soft_bounced = b.messages_soft_bounced + excluded.messages_soft_bounced,
            messages_complained = b.messages_complained + excluded.messages_complained,
            messages_replied = b.messages_replied + excluded.messages_replied
    )
    SELECT count(*) INTO folded FROM moved;
    RETURN folded;
END
$$;

-- Recompute every counter from messages and events, as they are now (the migration's
-- backfill; also a repair). Blocks writers of both tables while it runs.
CREATE FUNCTION rebuild_counters() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE messages, events IN SHARE MODE;
    PERFORM pg_advisory_xact_lock(7165074649429406323);
    TRUNCATE counter_buckets, counter_deltas, engagement_firsts;
    CREATE TEMPORARY TABLE firsts ON COMMIT DROP AS
        SELECT e.message_id, k.kind, min(e.occurred_at) AS occurred_at,
               min(e.campaign_id::text)::uuid AS campaign_id,
               min(e.account_id::text)::uuid AS account_id
        FROM events e
        CROSS JOIN LATERAL (
            VALUES (e.type),
                   (CASE WHEN e.type IN ('opened', 'clicked')
                              AND NOT coalesce((e.data->>'machine')::boolean, false)
                         THEN e.type || '-human' END)
        ) AS k (kind)
        WHERE e.type IN ('opened', 'clicked', 'unsubscribed') AND e.message_id IS NOT NULL
          AND k.kind IS NOT NULL
        GROUP BY e.message_id, k.kind;
    INSERT INTO engagement_firsts (message_id, kind) SELECT message_id, kind FROM firsts;
    INSERT INTO counter_deltas (bucket, campaign_id, account_id, messages_queued,
        messages_assigned, messages_sending, messages_sent, messages_deferred, messages_failed,
        messages_uncertain, messages_cancelled, messages_hard_bounced, messages_soft_bounced,
        messages_complained, messages_replied)
    SELECT '-infinity', campaign_id, account_id, count(*) FILTER (WHERE status = 'queued'),
           count(*) FILTER (WHERE status = 'assigned'), count(*) FILTER (WHERE status = 'sending'),
           count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status = 'deferred'),
           count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE status = 'uncertain'),
           count(*) FILTER (WHERE status = 'cancelled'),
           count(*) FILTER (WHERE bounce = 'hard'), count(*) FILTER (WHERE bounce = 'soft'),
           count(complained_at), count(replied_at)
    FROM messages GROUP BY campaign_id, account_id;
    INSERT INTO counter_deltas (bucket, campaign_id, account_id, sent, failed, deferred,
        bounces, hard_bounces, complaints, replies, opens, human_opens, clicks, human_clicks)
    SELECT date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
           campaign_id, account_id,
           count(*) FILTER (WHERE type = 'sent'), count(*) FILTER (WHERE type = 'failed'),
           count(*) FILTER (WHERE type = 'deferred'), count(*) FILTER (WHERE type = 'bounced'),
           count(*) FILTER (WHERE type = 'bounced' AND data->>'bounce' = 'hard'),
           count(*) FILTER (WHERE type = 'complained'), count(*) FILTER (WHERE type = 'replied'),
           count(*) FILTER (WHERE type = 'opened'),
           count(*) FILTER (WHERE type = 'opened'
                            AND NOT coalesce((data->>'machine')::boolean, false)),
           count(*) FILTER (WHERE type = 'clicked'),
           count(*) FILTER (WHERE type = 'clicked'
                            AND NOT coalesce((data->>'machine')::boolean, false))
    FROM events
    WHERE type IN ('sent', 'failed', 'deferred', 'bounced', 'complained', 'replied', 'opened',
                   'clicked')
    GROUP BY 1, 2, 3;
    INSERT INTO counter_deltas (bucket, campaign_id, account_id, unsubscribes, unique_opens,
        unique_human_opens, unique_clicks, unique_human_clicks)
    SELECT date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
           campaign_id, account_id,
           count(*) FILTER (WHERE kind = 'unsubscribed'),
           count(*) FILTER (WHERE kind = 'opened'), count(*) FILTER (WHERE kind = 'opened-human'),
           count(*) FILTER (WHERE kind = 'clicked'),
           count(*) FILTER (WHERE kind = 'clicked-human')
    FROM firsts GROUP BY 1, 2, 3;
    PERFORM fold_counters(NULL);
END
$$;

SELECT rebuild_counters();
