-- Bouncer: bounces, complaints and replies read from the accounts' mailboxes.

-- Where an SMTP account's returns arrive: delivery status notifications, feedback-loop reports
-- and replies. No imap_host: the account's mailbox is not read. The password is encrypted like
-- the SMTP one. imap_processed_folder: where processed messages are moved (created if absent);
-- NULL leaves them in place, flagged \Seen.
ALTER TABLE accounts
    ADD COLUMN imap_host text,
    ADD COLUMN imap_port integer CHECK (imap_port BETWEEN 1 AND 65535),
    ADD COLUMN imap_tls text CHECK (imap_tls IN ('implicit', 'starttls', 'none')),
    ADD COLUMN imap_username text,
    ADD COLUMN imap_password_enc bytea,
    ADD COLUMN imap_folder text NOT NULL DEFAULT 'INBOX',
    ADD COLUMN imap_processed_folder text,
    -- Bounce and complaint rates count sends after this instant only: resuming an account
    -- that was paused for its rates starts a fresh window.
    ADD COLUMN rates_since timestamptz NOT NULL DEFAULT '-infinity',
    ADD CONSTRAINT accounts_imap_complete CHECK (
        imap_host IS NULL OR (imap_port IS NOT NULL AND imap_tls IS NOT NULL
                              AND imap_username IS NOT NULL AND imap_password_enc IS NOT NULL)
    );
CREATE INDEX accounts_imap_idx ON accounts (id) WHERE imap_host IS NOT NULL;

-- What came back for a message after it was sent. Its status stays 'sent': these say what
-- happened after the receiving server accepted it.
ALTER TABLE messages
    ADD COLUMN bounce text CHECK (bounce IN ('hard', 'soft')),
    ADD COLUMN bounced_at timestamptz,
    ADD COLUMN complained_at timestamptz,
    ADD COLUMN replied_at timestamptz;
-- The sliding window of an account's most recent sends, for its bounce and complaint rates.
CREATE INDEX messages_account_sent_idx ON messages (account_id, sent_at DESC)
    WHERE sent_at IS NOT NULL;

-- Where each mailbox was read up to. A new UIDVALIDITY means the UIDs were reassigned: the
-- folder is read again from the start, and reports already processed are recognised by their
-- digest in inbound_reports.
CREATE TABLE mailbox_checkpoints (
    account_id  uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    folder      text NOT NULL,
    uidvalidity bigint NOT NULL,
    last_uid    bigint NOT NULL DEFAULT 0,
    polled_at   timestamptz NOT NULL DEFAULT now(),
    last_error  text
);

-- One row per message read from a mailbox, whatever it turned out to be: the record that it
-- was processed (so it never is twice), what it was, and what was done about it. Messages
-- nothing could make sense of are kept whole (up to the reader's size cap) for an operator.
CREATE TABLE inbound_reports (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    folder       text NOT NULL,
    uidvalidity  bigint NOT NULL,
    uid          bigint NOT NULL,
    digest       bytea NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('bounce', 'complaint', 'reply', 'auto-reply',
                                               'unsubscribe', 'unrecognized')),
    -- How it was recognised: 'rfc3464', 'arf', 'flufl', 'rfc3834', 'heuristic', 'token', ...
    parser       text,
    sender       text,
    subject      text,
    size         integer NOT NULL,
    truncated    boolean NOT NULL DEFAULT false,
    -- Per recipient: address, bounce type, status, diagnostic, matched message, action taken.
    details      jsonb NOT NULL DEFAULT '[]',
    matched      integer NOT NULL DEFAULT 0,
    problem      text,
    raw          bytea,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- The bus copy of what was done (messages.Feedback per recipient) goes out after commit;
    -- until it has, the report is in this outbox and is published again after a crash.
    published_at timestamptz,
    UNIQUE (account_id, digest)
);
CREATE INDEX inbound_reports_outbox_idx ON inbound_reports (id) WHERE published_at IS NULL;
CREATE INDEX inbound_reports_kind_idx ON inbound_reports (kind, received_at);
CREATE INDEX inbound_reports_account_idx ON inbound_reports (account_id, received_at);

-- Soft bounces per address, counted over a window to decide when an address is suppressed.
CREATE TABLE soft_bounces (
    email       text NOT NULL,
    report_id   bigint NOT NULL REFERENCES inbound_reports (id) ON DELETE CASCADE,
    message_id  bigint,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (email, occurred_at, report_id)
);

CREATE INDEX suppressions_created_idx ON suppressions (created_at DESC, id DESC);

-- Suppress addresses, each in its scope (NULL: every campaign) with its reason and optional
-- expiry, and cancel their messages not yet attempted; returns how many were cancelled. A
-- permanent suppression is never shortened or changed: suppressing again leaves it as it is.
-- A temporary one takes the new reason and source, and the later expiry (none: permanent);
-- one that already ran out starts over as the new one. Each (address, scope) at most once per
-- call: the caller removes repeats.
CREATE FUNCTION suppress_addresses(
    addresses text[], scopes uuid[], whys text[], origin text, untils timestamptz[]
)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    cancelled integer;
BEGIN
    INSERT INTO suppressions (email, campaign_id, reason, source, expires_at)
    SELECT lower(r.address), r.scope, r.why, origin, r.until
    FROM unnest(addresses, scopes, whys, untils) AS r (address, scope, why, until)
    ON CONFLICT (lower(email), coalesce(campaign_id, '00000000-0000-0000-0000-000000000000'))
    DO UPDATE SET
        reason = CASE WHEN suppressions.expires_at IS NULL THEN suppressions.reason
                      ELSE excluded.reason END,
        source = CASE WHEN suppressions.expires_at IS NULL THEN suppressions.source
                      ELSE excluded.source END,
        created_at = CASE WHEN suppressions.expires_at IS NOT NULL
                               AND suppressions.expires_at <= now()
                          THEN now() ELSE suppressions.created_at END,
        expires_at = CASE WHEN suppressions.expires_at IS NULL OR excluded.expires_at IS NULL
                          THEN NULL
                          WHEN suppressions.expires_at <= now() THEN excluded.expires_at
                          ELSE greatest(suppressions.expires_at, excluded.expires_at) END
    WHERE suppressions.expires_at IS NOT NULL;

    UPDATE messages AS m
    SET status = 'cancelled', last_error = 'suppressed: ' || r.why, updated_at = now()
    FROM unnest(addresses, scopes, whys) AS r (address, scope, why)
    WHERE lower(m.email) = lower(r.address)
      AND m.status IN ('queued', 'assigned', 'deferred')
      AND (r.scope IS NULL OR m.campaign_id = r.scope);
    GET DIAGNOSTICS cancelled = ROW_COUNT;
    RETURN cancelled;
END
$$;

-- One address: see suppress_addresses.
DROP FUNCTION suppress_address(text, uuid, text, text);
CREATE FUNCTION suppress_address(
    address text, scope uuid, why text, origin text, until timestamptz DEFAULT NULL
)
RETURNS integer
LANGUAGE sql AS $$
    SELECT suppress_addresses(ARRAY[address], ARRAY[scope], ARRAY[why], origin, ARRAY[until])
$$;
