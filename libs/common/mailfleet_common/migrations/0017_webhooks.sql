-- Outbound webhooks: endpoints registered through the API, and a transactional outbox of
-- deliveries filled by a trigger on `events`, so that an event and the deliveries it causes
-- commit together whichever service records it (the dispatcher, the bouncer, the API).

CREATE TABLE webhook_endpoints (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq                  bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- list order, cursors
    owner_id             uuid NOT NULL REFERENCES users (id),
    url                  text NOT NULL,
    description          text NOT NULL DEFAULT '',
    -- Webhook event types (message.sent, account.paused, ...) this endpoint receives.
    event_types          text[] NOT NULL CHECK (cardinality(event_types) > 0),
    -- The Standard Webhooks signing secret (whsec_...), encrypted with the crypto keys; NULL
    -- once `mailfleet check-keys --forget` gave it up (the endpoint is disabled until rotated).
    secret_enc           bytea,
    enabled              boolean NOT NULL DEFAULT true,
    disabled_reason      text,
    disabled_at          timestamptz,
    -- The current run of failed attempts: since when, and how many (reset by a success).
    failing_since        timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_owner_idx ON webhook_endpoints (owner_id, created_at, seq);

-- One event to one endpoint. `next_attempt_at` doubles as the lease: a worker claiming a row
-- moves it past the lease, so a worker that dies leaves the row due again when it expires.
CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         bigint NOT NULL,  -- events.id: the webhook-id is msg_<event_id>
    event_type       text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status_code integer,
    last_error       text,
    delivered_at     timestamptz,
    replay_of        bigint,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, id);

-- Every HTTP attempt of a delivery, for the endpoint's delivery log.
CREATE TABLE webhook_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    endpoint_id  uuid NOT NULL,
    attempt      integer NOT NULL,
    attempted_at timestamptz NOT NULL,
    status_code  integer,
    latency_ms   double precision NOT NULL,
    response     text,
    error        text
);
CREATE INDEX webhook_attempts_endpoint_idx ON webhook_attempts (endpoint_id, id);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id);

-- The webhook type of an `events` row, NULL for the types no webhook carries.
CREATE FUNCTION webhook_event_type(event_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN $1 IN ('queued', 'sent', 'deferred', 'failed', 'uncertain', 'opened', 'clicked',
                    'unsubscribed', 'bounced', 'complained', 'replied') THEN 'message.' || $1
        WHEN $1 = 'account-paused' THEN 'account.paused'
        WHEN $1 = 'account-resumed' THEN 'account.resumed'
        WHEN $1 = 'campaign-completed' THEN 'campaign.completed'
    END
$$;

-- The body of a webhook for an event (docs/api/webhooks.md describes each type's data).
CREATE FUNCTION webhook_payload(
    webhook_type text, occurred_at timestamptz, message_id bigint, campaign_id uuid,
    account_id uuid, email text, details jsonb
) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'type', $1,
        'timestamp', to_char($2 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data', jsonb_strip_nulls(jsonb_build_object(
            'message_id', $3, 'campaign_id', $4, 'account_id', $5, 'email', $6)
        ) || jsonb_build_object('details', coalesce($7, '{}'::jsonb))
    )
$$;

-- The outbox: each statement inserting events adds a delivery per enabled endpoint that
-- wants each event, in the same transaction. With no enabled endpoint it costs one index-only
-- probe per statement (not per row).
CREATE FUNCTION webhook_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, occurred_at, payload)
    SELECT ep.id, n.id, w.type, n.occurred_at,
           webhook_payload(w.type, n.occurred_at, n.message_id, n.campaign_id, n.account_id,
                           m.email, n.data)
    FROM new_events n
    CROSS JOIN LATERAL (SELECT webhook_event_type(n.type) AS type) w
    JOIN webhook_endpoints ep ON ep.enabled AND w.type = ANY (ep.event_types)
    LEFT JOIN messages m ON m.id = n.message_id
    WHERE w.type IS NOT NULL;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_webhook_outbox
    AFTER INSERT ON events REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox();

-- Wake the webhook workers when deliveries are added (they poll too, this only saves latency).
CREATE FUNCTION webhook_deliveries_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('webhook_deliveries', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_deliveries_notify
    AFTER INSERT ON webhook_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_deliveries_notify();
