-- mailfleet initial schema.
--
-- messages is the per-recipient delivery ledger. Its status moves only by compare-and-set:
--   queued    -> assigned (dispatcher reserved account capacity and published a send command)
--   assigned  -> sending  (a sender claimed it, durably, before SMTP DATA)
--   sending   -> sent | deferred | failed
--   sending   -> uncertain (its sender died mid-delivery: never re-sent automatically)
--   deferred  -> assigned (retry is due)
--   assigned  -> queued   (account paused, or the send command was stranded)
--   queued | assigned | deferred -> cancelled (campaign cancelled)

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL,
    prefix       text NOT NULL UNIQUE,
    key_hash     bytea NOT NULL,
    role         text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE accounts (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text NOT NULL,
    kind                text NOT NULL DEFAULT 'smtp' CHECK (kind IN ('smtp')),
    smtp_host           text NOT NULL,
    smtp_port           integer NOT NULL CHECK (smtp_port BETWEEN 1 AND 65535),
    smtp_tls            text NOT NULL CHECK (smtp_tls IN ('implicit', 'starttls', 'none')),
    smtp_username       text,
    smtp_password_enc   bytea,
    from_email          text NOT NULL,
    from_name           text,
    daily_limit         integer NOT NULL CHECK (daily_limit >= 0),
    min_gap_ms          integer NOT NULL DEFAULT 0 CHECK (min_gap_ms >= 0),
    -- Warm-up ramp: the effective limit on day d (0-based, counted from warmup_started_on)
    -- is min(daily_limit, warmup_initial + d * warmup_increment). NULL start: no warm-up.
    warmup_started_on   date,
    warmup_initial      integer NOT NULL DEFAULT 20 CHECK (warmup_initial >= 0),
    warmup_increment    integer NOT NULL DEFAULT 20 CHECK (warmup_increment >= 0),
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'paused', 'disabled', 'archived')),
    status_reason       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_active_idx ON accounts (id) WHERE status = 'active';

-- The limit an account may reach on a given day: daily limit capped by its warm-up ramp.
CREATE FUNCTION account_effective_limit(a accounts, day date) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN a.warmup_started_on IS NULL THEN a.daily_limit
        ELSE least(
            a.daily_limit,
            a.warmup_initial + greatest(day - a.warmup_started_on, 0) * a.warmup_increment
        )
    END
$$;

-- Capacity reserved per account and UTC day. Keyed by day, so no reset job is needed.
CREATE TABLE account_daily_usage (
    account_id uuid NOT NULL REFERENCES accounts (id),
    day        date NOT NULL,
    reserved   integer NOT NULL DEFAULT 0,
    sent       integer NOT NULL DEFAULT 0,
    failed     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day)
);

CREATE TABLE campaigns (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id      uuid NOT NULL REFERENCES users (id),
    name          text NOT NULL,
    subject       text NOT NULL,
    html_body     text,
    text_body     text,
    -- The accounts this campaign may send through; an empty pool means every active account.
    account_ids   uuid[] NOT NULL DEFAULT '{}',
    status        text NOT NULL DEFAULT 'draft'
                  CHECK (status IN ('draft', 'running', 'paused', 'cancelled', 'completed')),
    start_at      timestamptz,
    tracking      boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);
CREATE INDEX campaigns_status_idx ON campaigns (status) WHERE status = 'running';
CREATE INDEX campaigns_created_idx ON campaigns (created_at DESC, id DESC);

CREATE TABLE messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id     uuid NOT NULL REFERENCES campaigns (id),
    email           text NOT NULL,
    name            text,
    variables       jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'assigned', 'sending', 'sent', 'deferred',
                                      'failed', 'uncertain', 'cancelled')),
    account_id      uuid REFERENCES accounts (id),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    assigned_at     timestamptz,
    -- Set once, on the first claim, so every retry carries the same Message-ID.
    message_id      text,
    sender_replica  text,
    last_code       integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
-- Duplicates within a campaign are dropped at enqueue.
CREATE UNIQUE INDEX messages_campaign_email_key ON messages (campaign_id, lower(email));
-- Dispatcher: the next queued messages of running campaigns, oldest first.
CREATE INDEX messages_queued_idx ON messages (campaign_id, id) WHERE status = 'queued';
-- Dispatcher: retries that are due.
CREATE INDEX messages_deferred_idx ON messages (next_attempt_at) WHERE status = 'deferred';
-- Dispatcher: a running campaign's due retries, without reading other campaigns' ones.
CREATE INDEX messages_deferred_campaign_idx ON messages (campaign_id, next_attempt_at)
    WHERE status = 'deferred';
-- Dispatcher pacing and sweeps: what each account has in flight.
CREATE INDEX messages_inflight_idx ON messages (account_id, status, assigned_at)
    WHERE status IN ('assigned', 'sending');
CREATE INDEX messages_campaign_status_idx ON messages (campaign_id, status);
-- Dispatcher: messages cancelled while assigned, whose reserved unit is still to give back.
CREATE INDEX messages_cancelled_assigned_idx ON messages (id)
    WHERE status = 'cancelled' AND account_id IS NOT NULL;
CREATE INDEX messages_message_id_idx ON messages (message_id) WHERE message_id IS NOT NULL;

-- One row per SMTP attempt, written in batches from send-attempt events.
CREATE TABLE send_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   bigint NOT NULL,
    campaign_id  uuid NOT NULL,
    account_id   uuid NOT NULL,
    attempt      integer NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('sent', 'deferred', 'failed', 'uncertain')),
    smtp_code    integer,
    detail       text,
    attempted_at timestamptz NOT NULL,
    UNIQUE (message_id, attempt)
);
CREATE INDEX send_attempts_account_idx ON send_attempts (account_id, attempted_at);

-- Everything that happened, for reports and audit; partitioned by month so old months can be
-- detached or dropped cheaply. A default partition catches rows outside created partitions.
CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    occurred_at timestamptz NOT NULL,
    type        text NOT NULL,
    campaign_id uuid,
    message_id  bigint,
    account_id  uuid,
    data        jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (occurred_at, id)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE INDEX events_campaign_idx ON events (campaign_id, type, occurred_at);
CREATE INDEX events_account_idx ON events (account_id, type, occurred_at);
CREATE INDEX events_type_idx ON events (type, occurred_at);

-- Creates the monthly partition holding `month`, if it does not exist yet.
CREATE FUNCTION ensure_events_partition(month date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    start_day date := date_trunc('month', month)::date;
    name text := format('events_%s', to_char(start_day, 'YYYY_MM'));
BEGIN
    IF to_regclass(name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
            name, start_day, (start_day + interval '1 month')::date
        );
    END IF;
END
$$;
SELECT ensure_events_partition(current_date);
SELECT ensure_events_partition((current_date + interval '1 month')::date);

CREATE TABLE suppressions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL,
    -- NULL campaign: suppressed for every campaign.
    campaign_id uuid REFERENCES campaigns (id),
    reason      text NOT NULL,
    source      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE UNIQUE INDEX suppressions_scope_key
    ON suppressions (lower(email), coalesce(campaign_id, '00000000-0000-0000-0000-000000000000'));

-- A retried enqueue with the same Idempotency-Key returns the stored response.
CREATE TABLE idempotency_keys (
    key          text NOT NULL,
    principal    text NOT NULL,
    request_hash bytea NOT NULL,
    status_code  integer NOT NULL,
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

-- Live sender replicas, for spreading accounts and for finding messages orphaned by a death.
CREATE TABLE sender_replicas (
    id           text PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
